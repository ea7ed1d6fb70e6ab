"""The plugin's entries in NetBox's Plugins menu, each shown only to users who may view what it lists."""

from django.utils.translation import gettext_lazy as _
from netbox.plugins import PluginMenuItem

__all__ = (
    'menu_items',
)

menu_items = (
    PluginMenuItem(
        link='plugins:netbox_safejobs:retryevent_list',
        link_text=_('Retry Events'),
        permissions=['netbox_safejobs.view_retryevent'],
    ),
    PluginMenuItem(
        link='plugins:netbox_safejobs:jobdispatch_list',
        link_text=_('Jobs in Flight'),
        permissions=['netbox_safejobs.view_jobdispatch'],
    ),
)
