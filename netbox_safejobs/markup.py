"""
The plugin's help texts and health findings as HTML: `names` as code, **words** in bold, everything else escaped. The
texts are written once (``choices.KIND_HELP``, ``choices.STATE_HELP``, ``health.check()``), and read as plain text by
the command line, the REST API and the docs.
"""

import re

from django.utils.html import escape
from django.utils.safestring import mark_safe

__all__ = (
    'help_html',
)

CODE = re.compile(r'`([^`]+)`')
BOLD = re.compile(r'\*\*([^*]+)\*\*')


def help_html(text):
    """``text`` as HTML: escaped, `names` as ``<code>``, **words** as ``<strong>``."""
    html = CODE.sub(r'<code>\1</code>', escape(text))
    return mark_safe(BOLD.sub(r'<strong>\1</strong>', html))  # noqa: S308 (escaped above)
