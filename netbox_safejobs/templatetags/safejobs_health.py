"""``{% safejobs_health_panel %}``: the health check's findings as a panel, for users who may see them."""

from django import template

from ..health import check, may_view_health

__all__ = (
    'safejobs_health_panel',
)

register = template.Library()

LEVEL_COLORS = {
    'ok': 'green',
    'info': 'blue',
    'warning': 'yellow',
    'error': 'red',
}


@register.inclusion_tag('netbox_safejobs/inc/health_panel.html', takes_context=True)
def safejobs_health_panel(context):
    """Run the checks (as ``netbox safejobs_check`` does) and render them; nothing for users who may not see them."""
    if not may_view_health(context.get('request')):
        return {'report': None}
    report = check()
    findings = [{**vars(f), 'color': LEVEL_COLORS[f.level]} for f in report.findings]
    return {'report': report, 'findings': findings, 'status_color': LEVEL_COLORS[report.status]}
