"""DST/report.html: one plot per task showing what select kept and why.

    python -m curation select runs/raw --out runs/curated --report
    xdg-open runs/curated/report.html

Each plot shows the task's candidate returns in collection order (run_id, then run_index),
kept episodes in green and dropped ones in grey, the best window(s) shaded blue, the expert
return dotted blue, the cutoff dashed red (threshold mode) and the random return dotted grey.
Tables give kept and dropped episodes and steps per task and per run.
"""

from __future__ import annotations

import html
import io
import re
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from curation.select import NEGATIVE_RETURN_RULE, Selection  # noqa: E402
from curation.windows import group_starts  # noqa: E402
from shards import Root  # noqa: E402
from shards.console import format_cell  # noqa: E402

REPORT_FILE = "report.html"
PLOT_DIR = "report"
KEPT, DROPPED, CAPPED, WINDOW, CUTOFF = "#2ca02c", "#9e9e9e", "#ff7f0e", "#1f77b4", "#d62728"


def write_report(selection: Selection, root: Root) -> str:
    """Write report.html and one PNG per task under ``root``; returns report.html's path."""
    counts = np.bincount(selection.task_code, minlength=len(selection.tasks))
    starts = group_starts(counts)
    sections = []
    for code, task in enumerate(tqdm(selection.tasks, desc="report", unit="task", leave=False)):
        png = f"{PLOT_DIR}/{plot_name(task)}"
        root.write_bytes(png, _plot_task(selection, code, int(starts[code]), int(counts[code])))
        runs = _run_rows(selection, int(starts[code]), int(counts[code]))
        sections.append(
            f"<h2 id='{html.escape(plot_name(task)[:-4])}'>{html.escape(task)}</h2>\n"
            f"<img src='{html.escape(png)}' alt='returns of {html.escape(task)} in collection order'>\n"
            + _html_table(runs)
        )
    page = _PAGE.format(
        settings=html.escape(_settings(selection)),
        rule=html.escape(NEGATIVE_RETURN_RULE),
        summary=_html_table(_summary_rows(selection)),
        sections="\n".join(sections),
    )
    root.write_bytes(REPORT_FILE, page.encode())
    return root.path(REPORT_FILE)


def plot_name(task: str) -> str:
    """A file name for a task id: ``babyai/GoToLocal`` -> ``babyai__GoToLocal.png``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", task.replace("/", "__")) + ".png"


def _plot_task(selection: Selection, code: int, begin: int, count: int) -> bytes:
    returns = selection.returns[begin:begin + count]
    keep = selection.keep[begin:begin + count]
    capped = selection.capped[begin:begin + count] if selection.capped.size else np.zeros(count, dtype=bool)
    x = np.arange(count)
    fig, ax = plt.subplots(figsize=(9, 3.4), dpi=100)
    dropped = ~keep & ~capped
    size = 10 if count <= 2000 else 3
    ax.scatter(x[dropped], returns[dropped], s=size, c=DROPPED, label=f"dropped ({int(dropped.sum())})", lw=0)
    if capped.any():
        ax.scatter(x[capped], returns[capped], s=size, c=CAPPED, label=f"over the cap ({int(capped.sum())})", lw=0)
    ax.scatter(x[keep], returns[keep], s=size, c=KEPT, label=f"kept ({int(keep.sum())})", lw=0)
    threshold = selection.config.mode == "threshold"
    for g in np.flatnonzero(selection.group_task == code):
        g_begin = int(selection.group_start[g]) - begin
        g_end = g_begin + int(selection.group_count[g])
        w_begin = g_begin + int(selection.windows.start[g])
        width = int(selection.windows.width[g])
        first = g == np.flatnonzero(selection.group_task == code)[0]
        ax.axvspan(w_begin - 0.5, w_begin + width - 0.5, color=WINDOW, alpha=0.18, lw=0,
                   label=f"best window (W={width})" if first else None)
        ax.hlines(selection.windows.mean[g], g_begin - 0.5, g_end - 0.5, colors=WINDOW, linestyles=":",
                  label="expert return" if first else None)
        if threshold:
            ax.hlines(selection.cutoff[g], g_begin - 0.5, g_end - 0.5, colors=CUTOFF, linestyles="--",
                      label=f"cutoff ({selection.baseline_kind[g]} baseline)" if first else None)
    random = selection.random_return[code]
    if random is not None:
        ax.axhline(random, color="#555555", ls=(0, (1, 3)), lw=1, label="random return")
    run_ids = selection.index["run_id"].slice(begin, count).to_pylist()
    changes = [i for i in range(1, count) if run_ids[i] != run_ids[i - 1]]
    for i in changes:
        ax.axvline(i - 0.5, color="black", lw=0.6, alpha=0.5)
    if len(changes) < 12:
        for left, right in zip([0, *changes], [*changes, count]):
            ax.text((left + right - 1) / 2, 1.0, run_ids[left], transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=7, color="#333333")
    ax.set_xlim(-0.5, count - 0.5)
    ax.set_xlabel("episode in collection order (run_id, then run_index)")
    ax.set_ylabel("return")
    mode = f"threshold {selection.config.threshold:g}" if threshold else "best window"
    ax.set_title(f"{selection.tasks[code]}: {mode}, kept {int(keep.sum())}/{count}", fontsize=10, pad=14)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _summary_rows(selection: Selection) -> list[dict[str, Any]]:
    steps = np.bincount(selection.task_code, weights=selection.lengths, minlength=len(selection.tasks))
    rows = []
    for code, row in enumerate(selection.task_rows()):
        rows.append({
            "task": row["task"], "candidates": row["candidates"], "kept": row["kept"],
            "dropped": row["candidates"] - row["kept"],
            "kept steps": row["kept_steps"],
            "dropped steps": int(steps[code]) - row["kept_steps"],
            "W": row["window"], "expert return": row["expert_return"], "random return": row["random_return"],
            "baseline": row["baseline"], "cutoff": row["cutoff"],
        })
    return rows


def _run_rows(selection: Selection, begin: int, count: int) -> list[dict[str, Any]]:
    run_ids = np.array(selection.index["run_id"].slice(begin, count).to_pylist(), dtype=object)
    sources = np.array(selection.index["source"].slice(begin, count).to_pylist(), dtype=object)
    keep = selection.keep[begin:begin + count]
    lengths = selection.lengths[begin:begin + count]
    rows = []
    for run in dict.fromkeys(run_ids.tolist()):
        mine = run_ids == run
        rows.append({
            "run_id": run, "source": ",".join(sorted(set(sources[mine].tolist()))),
            "episodes": int(mine.sum()), "kept": int((mine & keep).sum()), "dropped": int((mine & ~keep).sum()),
            "kept steps": int(lengths[mine & keep].sum()), "dropped steps": int(lengths[mine & ~keep].sum()),
        })
    return rows


def _settings(selection: Selection) -> str:
    c = selection.config
    window = f"W={c.window}" if c.window is not None else f"W=min({c.max_window}, floor({c.frac:g} N)), at least 1"
    parts = [f"source {c.src}", f"mode {c.mode}", f"group per {c.group}", window]
    if c.mode == "threshold":
        parts += [f"threshold {c.threshold:g}", f"baseline {c.baseline}"]
    parts += [f"sources {','.join(c.sources)}", f"tasks {' '.join(c.tasks)}", f"min length {c.min_length}"]
    if c.max_episodes_per_task is not None:
        parts.append(f"at most {c.max_episodes_per_task} episodes per task")
    return "; ".join(parts)


def _html_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>(none)</p>"
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(format_cell(v))}</td>" for v in row.values()) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>GatoForge curation report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1100px; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 2px 8px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>Curation report</h1>
<p>{settings}</p>
<p>Rule: {rule}.</p>
<p>Green: kept; grey: dropped; blue band: the best window (the expert return is its mean, dotted blue);
dashed red: the cutoff; dotted grey: the random-policy return. Vertical lines separate runs.</p>
<h2>Summary</h2>
{summary}
{sections}
</body></html>
"""
