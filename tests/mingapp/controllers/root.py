"""Root controller of the Ming sample application."""
from tg import TGController, expose

from mingapp import model


class RootController(TGController):
    """Endpoints tests read documents (and rows) through."""

    @expose('json')
    def documents(self):
        """``{"documents": [{"name", "value"}, ...]}`` sorted by name."""
        docs = model.Document.query.find().sort('name').all()
        return dict(documents=[{'name': d.name, 'value': d.value} for d in docs])

    @expose('json')
    def rows(self):
        """``{"rows": [name, ...]}`` of the SQLAlchemy table (app using both)."""
        return dict(rows=[r.name for r in model.SQLASession.query(model.Row).order_by(
            model.Row.id)])
