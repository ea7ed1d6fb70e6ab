"""GraphQL of the plugin. NetBox reads the ``schema`` of this package (resource path ``graphql.schema``)."""

from .schema import schema

__all__ = (
    'schema',
)
