"""Tables of the sample application."""

from sqlalchemy import Column, Integer, Unicode

from . import DeclarativeBase


class Row(DeclarativeBase):
    """A generic row tests can write from jobs and read back."""

    __tablename__ = "rows"

    id = Column(Integer, primary_key=True)
    name = Column(Unicode(255), nullable=False)
    value = Column(Integer, nullable=True)

    def as_dict(self):
        return {"id": self.id, "name": self.name, "value": self.value}


class Group(DeclarativeBase):
    """Shaped like the quickstart ``tg_group`` table, for the seeding example."""

    __tablename__ = "tg_group"

    group_id = Column(Integer, autoincrement=True, primary_key=True)
    group_name = Column(Unicode(16), unique=True, nullable=False)
    display_name = Column(Unicode(255), nullable=True)

    def as_dict(self):
        return {
            "group_id": self.group_id,
            "group_name": self.group_name,
            "display_name": self.display_name,
        }
