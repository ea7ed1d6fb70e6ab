"""The plugin's entry in NetBox's Plugins menu, shown only to users who may view retry events."""

from django.utils.translation import gettext_lazy as _
from netbox.plugins import PluginMenuItem

__all__ = (
    'menu_items',
)

menu_items = (
    PluginMenuItem(
        link='plugins:netbox_safejobs:retryevent_list',
        link_text=_('Retry events'),
        permissions=['netbox_safejobs.view_retryevent'],
    ),
)
