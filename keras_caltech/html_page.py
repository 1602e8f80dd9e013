"""Self-contained HTML pages: one file with everything inline, nothing fetched.

``report.html`` (``evaluation/report.py``) and the explanation galleries
(``explain/gallery.py``) are pages that can be mailed, attached to an issue or opened
offline: images are inlined as base64 ``data:`` URIs, the styles sit in the page, and
there is no script and no external request. Every text put in a page goes through
:func:`escape`.

(Named ``html_page``, not ``html``, so that it never shadows the standard library's
``html`` module, which it uses.)
"""

import base64
import html
import pathlib

MIME_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}


def escape(value):
    """``value`` as text, safe inside an element or a quoted attribute."""
    return html.escape(str(value), quote=True)


def data_uri(data, mime):
    """Bytes (an encoded image) as a base64 ``data:`` URI of type ``mime``."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def file_data_uri(path):
    """The file at ``path`` as a ``data:`` URI, typed by its suffix (PNG, JPEG or GIF)."""
    path = pathlib.Path(path)
    return data_uri(path.read_bytes(), MIME_TYPES.get(path.suffix.lower(), "application/octet-stream"))


def page(title, style, body, *, head=""):
    """A whole HTML page.

    Args:
        title: the page's title (escaped here).
        style: CSS for the page's one ``<style>`` element.
        body: HTML inside ``<body>``, its texts already escaped.
        head: more HTML for ``<head>``, after the charset (e.g. a viewport ``<meta>``).

    Returns:
        The page as a string, ending with a newline.
    """
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">{head}'
            f"<title>{escape(title)}</title><style>{style}</style></head><body>{body}</body></html>\n")
