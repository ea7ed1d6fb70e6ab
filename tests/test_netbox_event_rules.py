"""
NetBox's own event-rule tests (``extras.tests.test_event_rules``), run with the plugin and with the commit they assume.

Those tests are Django ``TestCase``s: each runs in a transaction that never commits, and reads the RQ queue right
after the change. The plugin pushes a webhook once the change commits (``webhooks.py``), so 18 of them, run as they
are, find the queue empty (COMPATIBILITY.md lists them). Here each runs with the plugin's on-commit push made at once,
as the commit of a real request makes it: every one of them passes, so the plugin differs from stock NetBox in when
the push happens, and in nothing the tests check about what is pushed.
"""

from unittest import mock

from extras.tests import test_event_rules as upstream

from netbox_safejobs import dispatch, patches


class _CommitNow:
    """``django.db.transaction`` as ``dispatch.py`` sees it, with ``on_commit`` run at once (the commit happened)."""

    def __init__(self, module):
        self._module = module

    def on_commit(self, func, using=None, robust=False):
        func()

    def __getattr__(self, attr):
        return getattr(self._module, attr)


class EventRulesCommittedTest(upstream.EventRuleTestCase):

    def setUp(self):
        patches.install()
        self.assertIn('webhooks', patches.installed())
        patcher = mock.patch.object(dispatch, 'transaction', _CommitNow(dispatch.transaction))
        patcher.start()
        self.addCleanup(patcher.stop)
        super().setUp()
