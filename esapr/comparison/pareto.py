"""The Pareto picture of a comparison: test accuracy against training time per run, one point per
model, so the accuracy a unit of compute buys is seen at a glance. A model is on the Pareto front
when no other model trains in at most its time to at least its mean, better in one of the two.

Written from a ``Comparison`` alone (its table's means and intervals, its models' training
seconds), so ``esapr compare --pareto --aggregate_only`` draws it for runs trained long ago."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from esapr.comparison.figure import model_text, seeds_text
from esapr.figures import save_figure, wrap
from esapr.files import atomic_write_text, refuse_links
from esapr.progress import seconds

PARETO_KINDS = ("png", "csv", "md")
TIME_TICKS = ((0.1, "0.1 s"), (1, "1 s"), (10, "10 s"), (60, "1 min"), (600, "10 min"), (3600, "1 h"),
              (36000, "10 h"), (360000, "100 h"))


def pareto_front(times: Sequence[float], values: Sequence[float]) -> list[bool]:
    """Whether each (time, value) is on the front: no other point has time <= and value >=, with
    one of them strict. Equal points are all on it; a point with a missing time or value is not."""
    times, values = np.asarray(times, dtype=float), np.asarray(values, dtype=float)
    known = np.isfinite(times) & np.isfinite(values)
    at_most = (times[None, :] <= times[:, None]) & (values[None, :] >= values[:, None])
    better = (times[None, :] < times[:, None]) | (values[None, :] > values[:, None])
    dominated = (at_most & better & known[None, :]).any(axis=1)
    return list(known & ~dominated)


def pareto_metric(comparison, metric: str | None = None) -> str:
    """``metric`` where the comparison has it, else NDCG@10, else the first metric it shows."""
    have = comparison.metrics()
    return next(m for m in (metric, "NDCG@10", *comparison.shown()) if m in have)


def pareto_table(comparison, metric: str | None = None) -> pd.DataFrame:
    """One row per model, fastest first: its seeds, training seconds per run (mean over seeds) and
    per protocol the metric's mean, std over seeds, 95 % interval and whether it is on the front."""
    metric = pareto_metric(comparison, metric)
    table, models = comparison.table, comparison.models
    frame = models[["model", "template", "seeds", "train_seconds", "closed_form"]].copy()
    for protocol in comparison.protocols:
        rows = table[(table["protocol"] == protocol) & (table["metric"] == metric)].set_index("model")
        for column in ("mean", "std", "ci_low", "ci_high"):
            frame[f"{protocol}_{column}"] = frame["model"].map(rows[column]).astype(float)
        frame[f"{protocol}_front"] = pareto_front(frame["train_seconds"], frame[f"{protocol}_mean"])
    frame.insert(0, "metric", metric)
    return frame.sort_values("train_seconds", kind="stable", ignore_index=True)


def pareto_markdown(comparison, frame: pd.DataFrame, digits: int = 4) -> str:
    """The table as Markdown: **bold** the models on a protocol's front."""
    metric = frame["metric"].iloc[0] if len(frame) else "?"
    head = [f"{protocol} {metric} [95% interval]" for protocol in comparison.protocols]
    lines = ["| model (template) | seeds | training per run | " + " | ".join(head) + " |",
             "|---" * (3 + len(head)) + "|"]
    for row in frame.to_dict(orient="records"):
        cells = []
        for protocol in comparison.protocols:
            mean = row[f"{protocol}_mean"]
            bold = "**" if row[f"{protocol}_front"] else ""
            cells.append(f"{bold}{mean:.{digits}f}{bold} [{row[f'{protocol}_ci_low']:.{digits}f}, "
                         f"{row[f'{protocol}_ci_high']:.{digits}f}]" if math.isfinite(mean) else "-")
        lines.append(f"| {model_text(row['model'], row['template'])} | {seeds_text(row['seeds'], row['closed_form'])} | "
                     f"{seconds(row['train_seconds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", f"Bold: on the Pareto front of that protocol (no model trains faster to a higher "
                                  f"mean {metric})."]) + "\n"


def plot_pareto(comparison, png=None, metric: str | None = None):
    """The figure: a panel per protocol (full ranking first), test ``metric`` (mean over seeds,
    bars the 95 % bootstrap interval over test users and seeds) against training seconds per run
    (log scale), each model a labelled point; the front is a dashed staircase through filled
    points, the models off it hollow.

    Artists carry gids: ``point|<protocol>|<model>`` (its marker), ``label|<protocol>|<model>``,
    ``front|<protocol>`` (the staircase), ``caption``."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    frame = pareto_table(comparison, metric)
    metric = frame["metric"].iloc[0]
    protocols = list(comparison.protocols)
    timed = frame[np.isfinite(frame["train_seconds"].to_numpy(dtype=float))]
    width, height = 6.4 * len(protocols), 5.6
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(1, len(protocols), squeeze=False)[0]
    low = max(timed["train_seconds"].min() if len(timed) else 1.0, 1e-2)
    high = max(timed["train_seconds"].max() if len(timed) else 10.0, low * 10)
    for ax, protocol in zip(axes, protocols):
        front = timed[timed[f"{protocol}_front"]]
        for row in timed.to_dict(orient="records"):
            x, y = max(row["train_seconds"], low), row[f"{protocol}_mean"]
            if not math.isfinite(y):
                continue
            on = row[f"{protocol}_front"]
            bars = [[y - row[f"{protocol}_ci_low"]], [row[f"{protocol}_ci_high"] - y]]
            marker = ax.errorbar([x], [y], yerr=bars, fmt="o", ms=7, capsize=3, lw=1.1, zorder=3,
                                 color="tab:blue" if on else "0.45", mfc="tab:blue" if on else "white").lines[0]
            marker.set_gid(f"point|{protocol}|{row['model']}")
        if len(front) > 1:
            xs = np.maximum(front["train_seconds"].to_numpy(dtype=float), low)
            ax.step(xs, front[f"{protocol}_mean"], where="post", ls="--", lw=1.2, color="tab:blue", alpha=0.7,
                    zorder=2, gid=f"front|{protocol}")
        ax.set_xscale("log")
        ax.set_xlim(low / 2.5, high * 4)
        ticks = [(at, name) for at, name in TIME_TICKS if low / 2.5 <= at <= high * 4]
        if len(ticks) >= 2:     # times a reader knows, where they fit; else the log scale's own
            ax.set_xticks([at for at, _ in ticks], [name for _, name in ticks])
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("training time per run (log scale; mean over seeds)", fontsize=9)
        ax.set_ylabel(f"test {metric} (mean over seeds, 95% interval)", fontsize=9)
        ax.set_title("\n".join(wrap(comparison.protocols[protocol], width / len(protocols) - 0.8, 10)), fontsize=10)
        ax.grid(True, which="major", color="0.88", lw=0.7)
        ax.tick_params(labelsize=8.5)
    seeds = " ".join(map(str, comparison.settings.get("seeds", [])))
    fig.suptitle(f"{comparison.dataset}: test {metric} against training time ({comparison.n_users} test users"
                 + (f", seeds {seeds}" if seeds else "") + ")", fontsize=11.5)
    untimed = frame.loc[~frame.index.isin(timed.index), "model"].tolist()
    caption = ("Filled and joined: the Pareto front (no other model trains faster to a higher mean); hollow: a "
               "faster model is as good or better. Training time is the run's training and validation, "
               "closed-form grids whole." + (f" No training time recorded: {', '.join(untimed)}." if untimed else ""))
    lines = wrap(caption, width - 0.6, 8)
    fig.text(0.01, 0.012, "\n".join(lines), fontsize=8, color="0.3", ha="left", va="bottom", gid="caption")
    fig.subplots_adjust(left=0.07 if len(protocols) > 1 else 0.12, right=0.98, top=0.84,
                        bottom=0.11 + 0.035 * len(lines), wspace=0.2)
    for ax, protocol in zip(axes, protocols):       # placed on the final layout
        _label_points(fig, ax, protocol, timed, low)
    save_figure(fig, png, 150)
    return fig


def _label_points(fig, ax, protocol: str, frame: pd.DataFrame, low: float) -> None:
    """Each point's model name beside it, from the highest point down: to its right, else to its
    left, else below (then above) on either side, so that it stays inside the panel and covers no
    other label and no marker; a label moved off its point's height is joined to it by a thin line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.transforms import Bbox

    renderer = FigureCanvasAgg(fig).get_renderer()
    points = 72 / fig.dpi           # display pixels -> offset points
    rows = [r for r in frame.to_dict(orient="records") if math.isfinite(r[f"{protocol}_mean"])]
    where = {r["model"]: (max(r["train_seconds"], low), r[f"{protocol}_mean"]) for r in rows}
    pixels = {model: ax.transData.transform(xy) for model, xy in where.items()}
    markers = {model: Bbox.from_extents(x - 6, y - 6, x + 6, y + 6) for model, (x, y) in pixels.items()}
    panel = ax.get_window_extent(renderer)
    placed = []
    for row in sorted(rows, key=lambda r: -r[f"{protocol}_mean"]):
        model = row["model"]
        text = ax.annotate(str(model), where[model], xytext=(7, 0), textcoords="offset points", fontsize=8.5,
                           va="center", ha="left", gid=f"label|{protocol}|{model}",
                           fontweight="bold" if row[f"{protocol}_front"] else "normal")
        obstacles = placed + [box for other, box in markers.items() if other != model]
        extent = text.get_window_extent(renderer)
        x, y = pixels[model]
        gap = 7 / points
        shifts = [0.0] + [sign * k * (extent.height + 1) for k in range(1, 40) for sign in (-1, 1)]
        tries = [(side, dy, ha) for dy in shifts for side, ha in ((gap, "left"), (-gap, "right"))]
        for dx, dy, ha in tries:
            x0 = x + dx if ha == "left" else x + dx - extent.width
            box = Bbox.from_extents(x0, y + dy - extent.height / 2, x0 + extent.width, y + dy + extent.height / 2)
            if panel.contains(box.x0, box.y0) and panel.contains(box.x1, box.y1) and \
                    not any(box.overlaps(other) for other in obstacles):
                break
        else:
            dx, dy, ha = tries[0]
            box = Bbox.from_extents(x + dx, y - extent.height / 2, x + dx + extent.width, y + extent.height / 2)
        text.xyann = (dx * points, dy * points)
        text.set_ha(ha)
        if dy:
            ax.annotate("", where[model], xytext=text.xyann, textcoords="offset points",
                        arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.6})
        placed.append(box)


def pareto_files(prefix: Path) -> dict[str, Path]:
    """``prefix``_pareto.png, .csv, .md: beside the comparison's own files."""
    prefix = Path(prefix)
    return {kind: prefix.parent / f"{prefix.name}_pareto.{kind}" for kind in PARETO_KINDS}


def write_pareto(comparison, prefix: Path, metric: str | None = None) -> dict[str, Path]:
    """The figure, the table as CSV and as Markdown, beside the comparison's files (never through
    a symbolic link)."""
    files = pareto_files(prefix)
    refuse_links(Path(prefix).parent, *files.values())
    frame = pareto_table(comparison, metric)
    atomic_write_text(files["csv"], frame.to_csv(index=False))
    atomic_write_text(files["md"], pareto_markdown(comparison, frame))
    plot_pareto(comparison, files["png"], metric)
    return files
