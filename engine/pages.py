"""Every HTML page the engine writes, and the figure helpers its reports share.

    page(title, sections) -> str         one self-contained HTML document
    write_page(path, title, sections)    the same, written atomically; returns `path`

`sections` are, in order, any of:
- `Heading(text)`: a sub-heading;
- `Text(text)`: a paragraph, or `Text([...])`: a bulleted list of lines;
- `Table(frame, caption="")`: a pandas DataFrame (or a list of dicts) as an HTML table;
- `Image(figure, caption="")`: a matplotlib Figure, PNG bytes or a PNG file, embedded as a
  base64 `data:` URI (the page needs no other file and no network);
- `Pre(text)`: preformatted text (a spec, a command).
Every page ends with the engine's version. Nothing is interpreted as HTML: all text is escaped.

Figures are drawn on `matplotlib.figure.Figure` (`figure`), never through pyplot, so no global state
is touched; `save_png` writes one atomically and `png_bytes` renders one in memory.
"""
from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, Union

DPI = 100  # pixels per inch of every PNG the engine draws


@dataclass(frozen=True)
class Heading:
    text: str


@dataclass(frozen=True)
class Text:
    text: Union[str, Sequence[str]]


@dataclass(frozen=True)
class Table:
    frame: object  # pandas.DataFrame or a list of dicts
    caption: str = ""
    float_format: str = "{:.4g}"


@dataclass(frozen=True)
class Image:
    source: object  # matplotlib Figure, PNG bytes, or a path to a PNG file
    caption: str = ""


@dataclass(frozen=True)
class Pre:
    text: str


Section = Union[Heading, Text, Table, Image, Pre]


# Figures -----------------------------------------------------------------------------------------

def figure(width: float = 7, height: float = 4.5, **kwargs):
    """A new Figure (constrained layout unless `layout` is given), not registered with pyplot."""
    from matplotlib.figure import Figure
    kwargs.setdefault("layout", "constrained")
    return Figure(figsize=(width, height), **kwargs)


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def save_png(fig, path) -> Path:
    """Write `fig` as a PNG at `path`, atomically (engine.atomic); returns `path`."""
    from engine.atomic import atomic_path
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


# Pages -------------------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; padding: 0 1em;
       color: #222; background: #fff; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; } td.text { text-align: left; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: 0.3em; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
footer { margin-top: 3em; font-size: 0.8em; color: #666; }
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _cell(value, float_format: str) -> tuple[str, bool]:
    """(text, is_numeric) of one table cell."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–", True
    if isinstance(value, bool):
        return str(value), False
    if isinstance(value, float):
        return float_format.format(value), True
    if isinstance(value, int):
        return str(value), True
    try:  # numpy scalars
        import numpy as np
        if isinstance(value, np.integer):
            return str(int(value)), True
        if isinstance(value, np.floating):
            return _cell(float(value), float_format)
    except ImportError:  # pragma: no cover
        pass
    return str(value), False


def _table(t: Table) -> str:
    import pandas as pd
    frame = t.frame if isinstance(t.frame, pd.DataFrame) else pd.DataFrame(list(t.frame))
    out = ["<table>"]
    if t.caption:
        out.append(f"<caption>{_e(t.caption)}</caption>")
    out.append("<tr>" + "".join(f"<th>{_e(c)}</th>" for c in frame.columns) + "</tr>")
    for row in frame.itertuples(index=False):
        cells = []
        for value in row:
            text, numeric = _cell(value, t.float_format)
            cells.append(f"<td>{_e(text)}</td>" if numeric else f'<td class="text">{_e(text)}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _png(source) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    if isinstance(source, (str, Path)):
        return Path(source).read_bytes()
    return png_bytes(source)  # a matplotlib Figure


def _image(im: Image) -> str:
    data = base64.b64encode(_png(im.source)).decode("ascii")
    alt = _e(im.caption or "figure")
    caption = f"<figcaption>{_e(im.caption)}</figcaption>" if im.caption else ""
    return f'<figure><img alt="{alt}" src="data:image/png;base64,{data}">{caption}</figure>'


def _section(s: Section) -> str:
    if isinstance(s, Heading):
        return f"<h2>{_e(s.text)}</h2>"
    if isinstance(s, Text):
        if isinstance(s.text, str):
            return f"<p>{_e(s.text)}</p>"
        return "<ul>" + "".join(f"<li>{_e(line)}</li>" for line in s.text) + "</ul>"
    if isinstance(s, Table):
        return _table(s)
    if isinstance(s, Image):
        return _image(s)
    if isinstance(s, Pre):
        return f"<pre>{_e(s.text)}</pre>"
    raise TypeError(f"not a page section: {s!r}")


def page(title: str, sections: Iterable[Section]) -> str:
    """One self-contained HTML document: `title` as its heading, then `sections` in order."""
    from engine import __version__
    body = "\n".join(_section(s) for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_e(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{_e(title)}</h1>\n{body}\n<footer>written by engine {_e(__version__)}</footer>\n"
            f"</body>\n</html>\n")


def write_page(path, title: str, sections: Iterable[Section]) -> Path:
    """`page(title, sections)` written atomically to `path`; returns `path`."""
    from engine.atomic import write_bytes
    path = Path(path)
    write_bytes(path, page(title, list(sections)).encode("utf-8"))
    return path


__all__ = ["Heading", "Text", "Table", "Image", "Pre", "Section", "page", "write_page", "figure",
           "png_bytes", "save_png", "DPI"]
