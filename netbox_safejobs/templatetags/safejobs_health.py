"""``{% safejobs_health_panel %}``: the health check's findings as a panel, for users who may see them."""

from django import template

from ..health import COVERAGE_MAX_AGE, check, may_view_health
from ..markup import help_html

__all__ = (
    'panel_context',
    'safejobs_health_panel',
)

register = template.Library()

LEVEL_COLORS = {
    'ok': 'green',
    'info': 'blue',
    'warning': 'yellow',
    'error': 'red',
}
# The texts of a finding, written with `names` marked as in the command's output.
TEXTS = ('message', 'why', 'fix')


@register.inclusion_tag('netbox_safejobs/inc/health_panel.html', takes_context=True)
def safejobs_health_panel(context):
    """Run the checks (as ``netbox safejobs_check`` does) and render them; nothing for users who may not see them."""
    if not may_view_health(context.get('request')):
        return {'report': None}
    return panel_context(check(coverage_max_age=COVERAGE_MAX_AGE))


def panel_context(report):
    """
    The panel of a ``health.HealthReport``: its findings with their `names` as code, folded when every check is ok
    (the status alone is shown), open when one is not.
    """
    findings = [
        {**vars(f), 'color': LEVEL_COLORS[f.level], **{key: help_html(getattr(f, key)) for key in TEXTS}}
        for f in report.findings
    ]
    return {
        'report': report,
        'findings': findings,
        'status_color': LEVEL_COLORS[report.status],
        'expanded': report.status != 'ok',
    }
