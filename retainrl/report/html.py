"""report.html: one self-contained page (inline CSS, PNGs as base64 data URIs, no external URL)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222; margin: 0;
       background: #fafafa; line-height: 1.45; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 1.6em; margin: 0.2em 0 0.1em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.meta { color: #555; font-size: 0.92em; }
code { background: #f1f1f1; padding: 0 3px; border-radius: 3px; font-size: 0.92em; }
table { border-collapse: collapse; margin: 10px 0 6px; font-size: 0.93em; }
th, td { padding: 5px 10px; border-bottom: 1px solid #e3e3e3; text-align: left; white-space: nowrap; }
thead th { border-bottom: 2px solid #444; background: #f6f6f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { font-weight: 700; background: #e8f1fa; }
.scroll { overflow-x: auto; }
figure { margin: 18px 0 28px; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.92em; margin-top: 4px; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 3px 16px; font-size: 0.94em; }
dt { font-weight: 600; }
dd { margin: 0; }
"""


def data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(png).read_bytes()).decode("ascii")


def page(title: str, meta: str, sections: list[tuple[str, str]]) -> str:
    """The whole document; `sections` are (heading, inner HTML) pairs, already escaped."""
    body = "".join(f"<section><h2>{html.escape(h)}</h2>{inner}</section>" for h, inner in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><main><h1>{html.escape(title)}</h1>"
            f"<p class=\"meta\">{meta}</p>{body}</main></body></html>\n")


def _css_width(png: Path, dpi: int = 150) -> int:
    """Display width in CSS pixels (96 per inch) so every figure shows its fonts at one size."""
    width = int.from_bytes(Path(png).read_bytes()[16:20], "big")  # the PNG IHDR width
    return round(width * 96 / dpi)


def figure(png: Path, caption: str) -> str:
    return (f"<figure><img alt=\"{html.escape(caption)}\" width=\"{_css_width(png)}\" src=\"{data_uri(png)}\">"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def definitions(items: list[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{_code(v)}</dd>" for k, v in items) + "</dl>"


def _code(text: str) -> str:
    """Escape, turning `backticks` into <code>."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<div class=\"scroll\"><table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table></div>"
