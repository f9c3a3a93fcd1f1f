"""Main Controller of the sample application.

Tests usually pass their own root controller to ``make_app``; subclassing
this one keeps the generic endpoints below available.
"""

import tg
from tg import TGController, expose

from sampleapp import model

__all__ = ["RootController", "db_session"]


def db_session():
    """The DBSession of the application serving the current request.

    Read from the request config rather than ``model.DBSession`` because two
    sample apps alive at once each have their own session.
    """
    return tg.config.get("DBSession") or model.DBSession


class RootController(TGController):
    """Generic endpoints useful to any test."""

    @expose("kajiki:sampleapp.templates.index")
    def index(self, name="world"):
        return dict(name=name)

    @expose("json")
    def rows(self):
        """All rows, ordered by id: ``{"rows": [{"id", "name", "value"}, ...]}``.

        (A dict, because TG's JSON renderer refuses top-level lists.)
        """
        rows = db_session().query(model.Row).order_by(model.Row.id).all()
        return dict(rows=[row.as_dict() for row in rows])

    @expose("json")
    def add_row(self, name, value=None):
        """Insert a row (committed by the transaction manager) and return it."""
        row = model.Row(name=name, value=None if value in (None, "") else int(value))
        session = db_session()
        session.add(row)
        session.flush()
        return row.as_dict()

    @expose("json")
    def groups(self):
        """All groups: ``{"groups": [{"group_id", "group_name", "display_name"}]}``."""
        groups = db_session().query(model.Group).order_by(model.Group.group_id).all()
        return dict(groups=[group.as_dict() for group in groups])
