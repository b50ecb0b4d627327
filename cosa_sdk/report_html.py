"""Building blocks of the self-contained HTML pages (run report, dataset check): style, tables, embedded
pictures and class legends. Pillow and the standard library only, so any layer can write a page."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { padding: 4px 10px; border: 1px solid #ddd; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; } .caption { color: #666; font-size: 0.9em; } code { background: #f4f4f4; padding: 1px 4px; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 18px; list-style: none; padding: 0; margin: 0.6em 0; }
.legend li { display: flex; align-items: center; gap: 6px; } .legend .absent { color: #999; }
.legend .swatch { display: inline-block; width: 14px; height: 14px; border: 1px solid #0006; border-radius: 2px; }
.legend .share { color: #666; font-variant-numeric: tabular-nums; }
"""

# Marks <body data-images-loaded="OK/TOTAL"> after load, so a browser check (demo/browser.py) sees broken pictures.
IMAGE_CHECK_SCRIPT = """<script>
addEventListener("load", () => {
  const images = Array.from(document.images);
  const ok = images.filter((i) => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.imagesLoaded = ok + "/" + images.length;
});
</script>"""


def image_tag(picture: Image.Image, *, alt: str) -> str:
    """An <img> with the picture embedded as a base64 PNG, so the page works offline and mailed."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def legend(
    classes: Sequence[str],
    palette: Sequence[Sequence[int]],
    *,
    shares: Mapping[str, float] | None = None,
    ignore: str | None = None,
) -> str:
    """Which colour is which class: a swatch and the name per class, in class-index order.

    `shares` (class -> fraction of pixels) adds each class's share; classes with none are greyed.
    `ignore` labels the white swatch of ignored pixels (255), when the pictures have any.
    """
    items = []
    for index, name in enumerate(classes):
        rgb = tuple(int(v) for v in palette[index][:3]) if index < len(palette) else (0, 0, 0)
        share, state = "", ""
        if shares is not None:
            fraction = float(shares.get(name, 0.0))
            share = f' <span class="share">{100 * fraction:.1f} %</span>'
            state = "" if fraction > 0 else ' class="absent"'
        items.append(
            f'<li data-class="{html.escape(name)}"{state}>'
            f'<span class="swatch" style="background: rgb{rgb}"></span>{html.escape(name)}{share}</li>'
        )
    if ignore:
        items.append(
            '<li data-class="ignore"><span class="swatch" style="background: rgb(255, 255, 255)"></span>'
            f"{html.escape(ignore)}</li>"
        )
    return f'<ul class="legend" aria-label="class colours">{"".join(items)}</ul>'


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table; floats right-aligned with two decimals, None as a dash."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f'<td class="num">{value:.2f}</td>'
        if value is None:
            return '<td class="num">–</td>'
        return f"<td>{html.escape(str(value))}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"
