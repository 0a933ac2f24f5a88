"""Self-contained HTML pages: inline CSS, figures embedded as base64 PNG, no external
requests, so a page can be mailed, archived or opened from a CI artifact."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #1a1a1a; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { font-size: 1.25rem; margin-top: 2rem;
       border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .92rem; }
.scroll { max-width: 100%; overflow-x: auto; }
th, td { padding: .35rem .7rem; border-bottom: 1px solid #e3e3e3; text-align: right; white-space: nowrap; }
th { white-space: normal; min-width: 4rem; max-width: 14rem; vertical-align: bottom; }
td .ci { display: block; }
th:first-child, td:first-child { text-align: left; }
thead th { border-bottom: 2px solid #444; background: #fafafa; }
.ci { color: #666; font-size: .85em; } .up { color: #137333; } .down { color: #b3261e; font-weight: bold; }
.note { color: #555; font-size: .9rem; } .ok { color: #137333; } .bad { color: #b3261e; font-weight: bold; }
.meta td, .meta th { text-align: left; white-space: normal; max-width: none; } .meta td:first-child { color: #555; width: 14rem; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9rem; } pre { background: #f6f6f6; padding: .8rem; overflow-x: auto; font-size: .8rem; }
code { background: #f2f2f2; padding: 0 .2rem; }
"""


def esc(text: Any) -> str:
    return html.escape(str(text))


def img_tag(path: Path, alt: str) -> str:
    """An <img> with the PNG inlined as a data URI."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def figure(path: Path | None, caption: str, fig_id: str) -> str:
    if path is None:
        return ""
    return f'<figure id="{esc(fig_id)}">{img_tag(path, caption)}<figcaption>{esc(caption)}</figcaption></figure>'


def meta_table(rows: list[tuple[str, str]]) -> str:
    """Key/value table; values are trusted HTML (escape them before)."""
    body = "".join(f"<tr><td>{esc(k)}</td><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="meta">{body}</table>'


def section(title: str, body: str, section_id: str) -> str:
    return f'<section id="{esc(section_id)}"><h2>{esc(title)}</h2>{body}</section>'


def scrolling(body: str) -> str:
    """Every table inside a box that scrolls sideways when the table is wider than the page: nothing
    is cut at any width (headers wrap, intervals sit under their values, so most tables fit as they are)."""
    return re.sub(r"(<table\b.*?</table>)", r'<div class="scroll">\1</div>', body, flags=re.S)


def visible_text(body: str) -> str:
    """The text a reader sees in an HTML fragment (tags and embedded images dropped)."""
    return html.unescape(re.sub(r"<[^>]+>", " ", re.sub(r'src="data:[^"]*"', "", body)))


def page(title: str, body: str) -> str:
    body = scrolling(body)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
        f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


def details(summary: str, text: str) -> str:
    return f"<details><summary>{esc(summary)}</summary><pre>{esc(text)}</pre></details>"
