"""The HTML report of a valuation run: one file, plots embedded as base64 PNG.

Why one self-contained file: it is sent around (mail, tickets) and opened offline; a report
that needs a server or a folder of images gets lost. Content: what was valued and how, the
value distribution, removal curves against a random order, the group table with costs and
the acquisition projection, and the lowest- and highest-valued records.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from shoprank.valuation.job import ValuationJob

CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.note{color:#a60}img{max-width:100%}"""


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _hist(values: np.ndarray, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    v = values[np.isfinite(values)]
    ax.hist(v, bins=min(60, max(5, len(v) // 20)), color="#4a7ab5")
    ax.set_xlabel("value")
    ax.set_ylabel("records")
    ax.set_title(title)
    fig.tight_layout()
    return _png(fig)


def _group_bars(df: pd.DataFrame, col: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = df.sort_values("value")
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(d) + 1.2))
    ax.barh(d["group"].astype(str), d["value"], xerr=d["stderr"].where(np.isfinite(d["stderr"]), 0.0),
            color=np.where(d["value"] < 0, "#c0504d", "#4a7ab5"))
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel(f"value of the {col}")
    fig.tight_layout()
    return _png(fig)


def _table(df: pd.DataFrame, max_rows: int = 30) -> str:
    return df.head(max_rows).to_html(index=False, float_format=lambda x: f"{x:.4g}", na_rep="", border=0,
                                     escape=True)


def write_report(job: ValuationJob, path: Path) -> Path:
    """Write report.html for a finished job and return its path."""
    from shoprank.valuation.experiments import plot_curves

    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>shoprank valuation: {e(job.method)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>Data valuation: {e(job.method)}</h1>",
             f"<p>task <b>{e(job.task)}</b>; {len(job.records.frame):,} training records; "
             f"scorer {e(str(getattr(job.records.scorer, 'name', job.records.scorer)))}; "
             f"{'grouped by <b>' + e(job.group_by) + '</b>; ' if job.group_by else ''}"
             f"{job.result.n_updates:,} samples; {job.seconds:.1f} s.</p>"]
    for n in job.notes:
        parts.append(f"<p class='note'>{e(n)}</p>")
    grouped = job.group_by is not None and len(job.result) != len(job.records.frame)
    if not grouped:
        parts.append("<h2>Value distribution</h2>" + _hist(job.result.values, f"{job.method} values"))
    if job.curves is not None:
        parts.append("<h2>Removal curves</h2><p>Validation score after removing a fraction of the training "
                     "records, highest values first and lowest values first, against random removal "
                     "(mean and spread over seeds). Removing low-value records should help or hurt "
                     "least; removing high-value records should hurt most.</p>")
        parts.append(_png(plot_curves(job.curves, title="removal")))
    if job.groups is not None:
        parts.append(f"<h2>Groups by {e(job.group_by or '')}</h2>"
                     "<p>Sorted by value per unit cost (value / total cost of the group's records). "
                     "projected_gain: learning-curve projection (power law fitted to the validation score "
                     "as the group grows) of what n_more further records of the group would add.</p>")
        parts.append(_group_bars(job.groups, job.group_by or "group"))
        parts.append(_table(job.groups))
    if not grouped:
        vf = job.values_frame()
        show = [c for c in vf.columns if c not in ("u", "i", "c", "w")]
        parts.append("<h2>Lowest-valued records</h2><p>Candidates for review or removal.</p>"
                     + _table(vf.sort_values("value", kind="stable")[show], 15))
        parts.append("<h2>Highest-valued records</h2>"
                     + _table(vf.sort_values("value", ascending=False, kind="stable")[show], 15))
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
