"""The labels that look wrong, as thumbnails: the page ``check --labels`` writes and the run report's section.

The rows are those of ``label_issues.csv`` (:mod:`headstart.curation.label_issues`): path, given and suggested
label, label quality, kind (and, for multi-label data, the labels that look ``missing`` and ``extra``:
:mod:`headstart.curation.label_issues_multilabel`). This module only reads and draws them, so the report needs
nothing above its layer.
"""

from __future__ import annotations

import csv
from pathlib import Path

from headstart.core.errors import HeadstartError
from headstart.report import figures
from headstart.report.html import esc, img, para

SHOWN = 48  # thumbnails on a page; the CSV lists every row


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a ``label_issues.csv``; [] when it is absent or unreadable."""
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def tiles(rows: list[dict], limit: int = SHOWN) -> str:
    """A grid of thumbnails, each with its given label, the suggested one and the label quality."""
    out = []
    for row in rows[:limit]:
        try:
            data, mime = figures.thumbnail(row["path"])
            picture = img(data, f"labelled {row['given_label']}", mime)
        except (HeadstartError, OSError, ValueError) as exc:
            picture = f'<div class="note">cannot show: {esc(exc)}</div>'
        quality = row.get("label_quality", "")
        suggested = (f'<div>suggested <span class="pred">{esc(row["suggested_label"])}</span></div>'
                     if row.get("suggested_label") and row["suggested_label"] != row["given_label"] else "")
        changes = "; ".join(f"{what} {esc(row[what].replace(';', ', '))}" for what in ("missing", "extra")
                            if row.get(what))  # multi-label rows: which labels look wrong
        suggested += f'<div class="pred">{changes}</div>' if changes else ""
        note = "copy labelled differently" if row.get("kind") == "label-conflict" else f"quality {esc(quality)}"
        out.append(f'<div class="thumb">{picture}<div>given <span class="true">{esc(row["given_label"])}</span>'
                   f'</div>{suggested}<div class="path">{esc(note)} · {esc(Path(row["path"]).name)}</div></div>')
    return f'<div class="thumbs">{"".join(out)}</div>'


def section_body(rows: list[dict], csv_name: str, limit: int = SHOWN) -> str:
    """What the page and the run report show: a sentence, the thumbnails, and where the full list is."""
    flagged = sum(r.get("kind") == "confident-learning" for r in rows)
    conflicts = sum(r.get("kind") == "label-conflict" for r in rows)
    if not rows:
        return para("No label looks wrong: confident learning flagged none, and no copies are labelled differently.")
    text = (f"{flagged} image(s) whose label the out-of-fold probe finds unlikely (least likely first)"
            + (f", and {conflicts} copies of a picture labelled differently" if conflicts else "") + ". "
            f"Each was judged by a head that never saw it. Look at them before trusting the label; the full list, "
            f"with every path, is <code>{esc(csv_name)}</code>.")
    shown = f" The first {limit} are shown." if len(rows) > limit else ""
    return para(text + shown) + tiles(rows, limit)


def run_section(run) -> tuple[str, str, str] | None:
    """The run report's section (single- and multi-label runs) when ``check --labels --run`` wrote
    ``label_issues.csv`` into the run (a :class:`headstart.data.rundir.RunDir`); None otherwise."""
    if not run.has(run.LABEL_ISSUES):
        return None
    rows = read_rows(run / run.LABEL_ISSUES)
    return "label-issues", "Labels that look wrong", section_body(rows, run.LABEL_ISSUES)
