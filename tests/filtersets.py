"""
The plugin's filter sets where NetBox's filter set tests look for them: ``test_missing_filters`` of
``BaseFilterSetTestMixin`` imports ``<top package of the test>.filtersets.<Model>FilterSet``, and these tests live in
``tests``, beside the plugin's package rather than in it.
"""

from netbox_safejobs.filtersets import JobDispatchFilterSet, RetryEventFilterSet

__all__ = (
    'JobDispatchFilterSet',
    'RetryEventFilterSet',
)
