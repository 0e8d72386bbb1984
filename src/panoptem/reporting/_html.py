"""Self-contained HTML pages: inline style, images and files as data: URIs."""
from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence

import numpy as np

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; }
th { background: #f4f4f4; } td.text, th.text { text-align: left; }
.scroll { overflow-x: auto; } img { max-width: 100%; height: auto; image-rendering: pixelated; }
figure { margin: 1em 0; } figcaption { font-size: 0.85em; color: #555; }
.note { font-size: 0.85em; color: #555; }
"""


def esc(s) -> str:
    return html.escape(str(s), quote=True)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def img(png: bytes, alt: str, caption: str | None = None) -> str:
    tag = f'<img alt="{esc(alt)}" src="{data_uri(png, "image/png")}">'
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f"<figure>{tag}{cap}</figure>"


def cell(v) -> str:
    """A number as shown in tables: integers exactly, floats with 6 significant digits."""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.6g}"
    return str(v)


def table(columns: Sequence[str], rows: Iterable[Sequence], cls: str = "") -> str:
    """An HTML table; cells are formatted with :func:`cell` and escaped."""
    head = "".join(f'<th class="text">{esc(c)}</th>' if i == 0 and not cls else f"<th>{esc(c)}</th>"
                   for i, c in enumerate(columns))
    body = []
    for r in rows:
        tds = []
        for v in r:
            text = isinstance(v, str)
            tds.append(f'<td class="text">{esc(v)}</td>' if text else f"<td>{esc(cell(v))}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    attr = f' class="{cls}"' if cls else ""
    return f'<div class="scroll"><table{attr}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{_STYLE}</style></head><body>\n<h1>{esc(title)}</h1>\n{body}\n</body></html>\n")
