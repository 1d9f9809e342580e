"""The pieces of a report page: escaped text, tables, inline images and the page around them.

Everything a page needs travels inside it: CSS in a ``<style>`` element, images as ``data:`` URIs. The file opens
offline, survives being emailed, and fetches nothing (no fonts, scripts or stylesheets from elsewhere).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Sequence
from html import escape

CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa; --accent: #0969da;
        --good: #1a7f37; --bad: #cf222e; --warn-bg: #fff8c5; --warn-line: #d4a72c; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; font: 15px/1.55 -apple-system, BlinkMacSystemFont, "Segoe UI",
       "Noto Sans", Helvetica, Arial, sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 28px 28px 72px; }
header.top { border-bottom: 1px solid var(--line); padding-bottom: 14px; margin-bottom: 20px; }
header.top h1 { font-size: 26px; margin: 0 0 4px; font-weight: 650; letter-spacing: -0.01em; }
header.top .sub { color: var(--muted); font-size: 14px; word-break: break-all; }
nav.toc { display: flex; flex-wrap: wrap; gap: 6px 14px; font-size: 13px; margin: 10px 0 0; }
nav.toc a { color: var(--accent); text-decoration: none; }
nav.toc a:hover { text-decoration: underline; }
h2 { font-size: 19px; margin: 36px 0 10px; padding-top: 8px; border-top: 1px solid var(--line); font-weight: 620; }
h3 { font-size: 15px; margin: 20px 0 8px; font-weight: 620; }
p { margin: 6px 0 10px; }
.muted, .note { color: var(--muted); }
.note { font-size: 13.5px; }
code { font: 12.5px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--soft);
       padding: 1px 5px; border-radius: 4px; word-break: break-all; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(160px, 1fr)); gap: 12px; margin: 6px 0 8px; }
.card { border: 1px solid var(--line); border-radius: 10px; padding: 12px 16px 13px; background: #fff; }
.card.lead { background: linear-gradient(180deg, #f0f6ff, #fff); border-color: #b6d4fe; }
.card .k { color: var(--muted); font-size: 11.5px; text-transform: uppercase; letter-spacing: .05em; }
.card .v { font-size: 25px; font-weight: 640; line-height: 1.25; margin-top: 2px; overflow-wrap: anywhere; }
.card .v.small { font-size: 17px; }
.card .v.long { font-size: 15px; }
.card .d { color: var(--muted); font-size: 12.5px; margin-top: 2px; }
.callout { border: 1px solid var(--warn-line); background: var(--warn-bg); border-radius: 8px; padding: 8px 12px;
           margin: 8px 0 12px; font-size: 14px; }
.callout.info { border-color: #9ec5fe; background: #f0f6ff; }
.tablewrap { overflow-x: auto; margin: 6px 0 12px; }
table { border-collapse: collapse; font-size: 13.5px; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); text-align: right; vertical-align: top; }
th { font-weight: 600; background: var(--soft); }
th.l, td.l { text-align: left; }
tbody tr:hover td { background: #fafbfc; }
td.bar { min-width: 110px; }
.bar span { display: inline-block; height: 8px; border-radius: 4px; background: var(--accent); opacity: .75;
            vertical-align: middle; margin-right: 6px; }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: 4px 18px; margin: 6px 0 12px; font-size: 14px; }
dl.kv dt { color: var(--muted); }
dl.kv dd { margin: 0; overflow-wrap: anywhere; }
figure { margin: 8px 0 16px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 8px; background: #fff; }
.pair { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 16px; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
table.cm { font-size: 12px; }
table.cm td { text-align: center; min-width: 34px; border: 1px solid #fff; }
table.cm th.rot { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left; padding: 8px 3px;
                  max-height: 140px; }
table.cm th.corner { background: #fff; font-weight: 400; color: var(--muted); text-align: left; font-size: 11.5px; }
.thumbs { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 12px; }
.thumb { border: 1px solid var(--line); border-radius: 8px; padding: 8px; font-size: 12.5px; line-height: 1.4;
         text-align: center; }
.thumb img { width: 96px; height: 96px; object-fit: contain; background: var(--soft); border-radius: 4px;
             display: block; margin: 0 auto 6px; }
.thumbs.cams { grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); }
.thumb .pair { display: flex; gap: 6px; justify-content: center; }
.thumb .pair img { margin: 0 0 6px; }
.thumb .true { color: var(--good); font-weight: 600; }
.thumb .pred { color: var(--bad); font-weight: 600; }
.thumb .path { color: var(--muted); font-size: 11px; overflow-wrap: anywhere; }
details { margin: 6px 0 12px; }
details summary { cursor: pointer; color: var(--accent); font-size: 14px; }
.md table { margin: 6px 0 12px; }
.md th, .md td { text-align: left; }
footer { margin-top: 48px; color: var(--muted); font-size: 12.5px; border-top: 1px solid var(--line);
         padding-top: 10px; }
@media print { main { max-width: none; padding: 0; } h2 { break-after: avoid; }
               figure, .thumb { break-inside: avoid; } }
"""


def esc(value) -> str:
    return escape(str(value), quote=True)


def pct(x, digits: int = 1) -> str:
    """``0.8734`` as ``87.3%``; a missing or NaN figure as an em dash."""
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}%"


def num(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:.{digits}f}"


def duration(seconds) -> str:
    if seconds is None:
        return "—"
    seconds = float(seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def img(data: bytes, alt: str, mime: str = "image/png", width: int | None = None) -> str:
    size = f' width="{width}"' if width else ""
    return f'<img src="{data_uri(data, mime)}" alt="{esc(alt)}"{size}>'


def figure(data: bytes, alt: str, caption: str = "", width: int | None = None) -> str:
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f"<figure>{img(data, alt, width=width)}{cap}</figure>"


def card(key: str, value: str, detail: str = "", lead: bool = False, small: bool = False) -> str:
    """One figure of the summary row; ``value`` and ``detail`` are HTML (escape text first)."""
    return (f'<div class="card{" lead" if lead else ""}"><div class="k">{esc(key)}</div>'
            f'<div class="v{" small" if small else ""}{" long" if small and len(value) > 14 else ""}">{value}</div>'
            + (f'<div class="d">{detail}</div>' if detail else "") + "</div>")


def cards(items: Iterable[str]) -> str:
    return f'<div class="cards">{"".join(items)}</div>'


def callout(html: str, info: bool = False) -> str:
    return f'<div class="callout{" info" if info else ""}">{html}</div>'


def para(html: str, cls: str = "") -> str:
    return f'<p class="{cls}">{html}</p>' if cls else f"<p>{html}</p>"


def kv(pairs: Sequence[tuple[str, str]]) -> str:
    """A definition list; values are HTML."""
    return '<dl class="kv">' + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


def table(header: Sequence[str], rows: Iterable[Sequence[str]], left: int = 1, cls: str = "") -> str:
    """A table of HTML cells; the first ``left`` columns are text (left-aligned), the rest figures."""
    def row(cells, tag):
        return "<tr>" + "".join(f"<{tag}{LEFT if i < left else ''}>{c}</{tag}>" for i, c in enumerate(cells)) + "</tr>"

    body = "".join(row(r, "td") for r in rows)
    attr = f' class="{cls}"' if cls else ""
    return (f'<div class="tablewrap"><table{attr}><thead>{row(list(map(esc, header)), "th")}</thead>'
            f"<tbody>{body}</tbody></table></div>")


LEFT = ' class="l"'


def bar(fraction: float | None, text: str) -> str:
    """A figure with a small horizontal bar in front of it (``fraction`` of 0..1)."""
    if fraction is None or (isinstance(fraction, float) and math.isnan(fraction)):
        return text
    return f'<span class="bar"><span style="width:{max(0.0, min(1.0, fraction)) * 70:.0f}px"></span></span>{text}'


def details(summary: str, html: str) -> str:
    return f"<details><summary>{esc(summary)}</summary>{html}</details>"


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]], lead: str = "", footer: str = "") -> str:
    """The whole document: a header with a table of contents, ``lead`` (the summary cards), then each
    ``(anchor, title, body)`` section."""
    toc = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t, _ in sections)
    body = "".join(section(a, t, b) for a, t, b in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
            f'<header class="top"><h1>{esc(title)}</h1><div class="sub">{subtitle}</div>'
            f'<nav class="toc">{toc}</nav></header>{lead}{body}'
            f"<footer>{footer}</footer></main></body></html>\n")
