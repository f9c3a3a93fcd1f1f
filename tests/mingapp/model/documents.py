"""Documents of the Ming sample application."""
from ming import schema
from ming.odm import FieldProperty, MappedClass

from . import DBSession


class Document(MappedClass):
    """A generic document tests write from jobs and read back."""

    class __mongometa__:
        session = DBSession
        name = 'documents'

    _id = FieldProperty(schema.ObjectId)
    name = FieldProperty(str)
    value = FieldProperty(int, if_missing=0)
