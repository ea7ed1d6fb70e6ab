"""Model fields of the plugin's own."""

from django.db import models

__all__ = (
    'StoredGeneratedField',
)


class StoredGeneratedField(models.GeneratedField):
    """
    A stored generated column (``GENERATED ALWAYS AS (…) STORED``), checked without asking the database.

    Django's system checks of a ``GeneratedField`` ask each database whether it supports generated columns, and on
    Django 6 (NetBox 4.7) that question opens a connection: every management command, ``netbox rqworker`` and
    ``netbox safejobs_check`` included, would then fail before it starts while PostgreSQL is down, where NetBox
    without the plugin starts and meets the outage later. Every PostgreSQL that NetBox supports (14 and newer) has
    stored generated columns, so those checks are made without a database; the others run as usual.
    """

    def check(self, **kwargs):
        return super().check(**{**kwargs, 'databases': []})
