"""The figure of a comparison: one column per model, the full-ranking block first, then the
sampled block; each cell the mean ± std over seeds with its bootstrap interval, the best model
and those not significantly worse shaded (matplotlib, without pyplot)."""
from __future__ import annotations

from typing import Iterable

import pandas as pd

from esapr.comparison.stats import ALPHA
from esapr.figures import save_figure, table_canvas, text_lines, wrap
from esapr.progress import seconds


def plot_comparison(comparison, png=None, metrics: Iterable[str] | None = None, digits: int = 4):
    """The figure of an ``esapr compare`` table: one column per model; the full-ranking block
    first, then the sampled block, each cell the mean ± std over seeds with the 95 % bootstrap
    interval under it; the best model per metric bold on green, models not significantly worse
    than it on pale green; then each model's seeds, epochs (best), training time and device
    (capped runs in red); a caption saying how to read it, and the runs left out.

    Artists carry gids: ``cell|<protocol>|<model>|<metric>`` (the mean text), ``shade|...``
    (the background of a best or tied cell), ``info|<row>|<model>``, ``caption``, ``left_out``."""
    from matplotlib.patches import Rectangle

    table, models = comparison.table, comparison.models
    metrics = comparison.shown(metrics)
    labels = list(models["model"])
    label_w, cell_w, pad = 1.9, 1.55, 0.15
    width = max(pad * 2 + label_w + cell_w * len(labels), 7.0)
    cell_w = min(2.2, (width - 2 * pad - label_w) / len(labels))   # a few models: wider cells
    inner = width - 2 * pad
    seeds = " ".join(map(str, comparison.settings.get("seeds", [])))
    title = (f"{comparison.dataset}: {comparison.n_users} test users" + (f", seeds {seeds}" if seeds else "")
             + "; mean ± std over seeds, [95% interval]"
             + ("; PILOT runs (one batch per epoch): a smoke test, not results" if comparison.settings.get("pilot")
                else ""))
    title_lines = wrap(title, inner, 10.5)
    caption = (f"Each cell: mean over seeds ± standard deviation between seeds; below, the 95% interval of a "
               f"bootstrap over test users and seeds. Bold on green: the best model for that metric; pale green: "
               f"not significantly worse than it (two-sided Wilcoxon signed-rank test on per-user values averaged "
               f"over seeds, Holm-corrected across models, p >= {ALPHA}); white: significantly worse. "
               f"All runs rank the same candidates for the same test users. 'capped' (red): runs that reached "
               f"num_epochs before early stopping, so they may not have converged."
               + (" 'one fit': a closed-form model fits the same weights whatever the seed, so it is fitted once "
                  "(no std); 'grid N (best k)': it fitted N settings and tested the k-th."
                  if models["closed_form"].any() else ""))
    caption_lines = wrap(caption, inner, 7.5)
    left = comparison.left_out_lines()
    left_lines = wrap("Left out (not finished runs): " + "; ".join(left), inner, 7.5) if left else []
    head_h, block_h, row_h, info_h, line_h = 0.5, 0.34, 0.5, 0.27, 0.16
    info_rows = ("seeds", "epochs (best)", "training time per run", "device")
    blocks = list(comparison.protocols)
    height = (pad + 0.28 * len(title_lines) + head_h + len(blocks) * (block_h + row_h * len(metrics))
              + block_h + info_h * len(info_rows) + 0.12 + line_h * (len(caption_lines) + len(left_lines)) + pad)
    fig, ax = table_canvas(width, height)
    x0 = pad + label_w
    right = x0 + cell_w * len(labels)
    y = pad
    for line in title_lines:
        ax.text(pad, y + 0.14, line, ha="left", va="center", fontsize=10.5, gid="title")
        y += 0.28
    capped = dict(zip(models["model"], models["capped"]))
    for j, row in enumerate(models.itertuples()):
        x = x0 + cell_w * (j + 0.5)
        ax.text(x, y + 0.17, str(row.model), ha="center", va="center", fontsize=9.5, fontweight="bold")
        ax.text(x, y + 0.37, str(row.template), ha="center", va="center", fontsize=7, color="0.35")
    y += head_h
    ax.plot([pad, right], [y, y], color="black", lw=1.0)
    for protocol in blocks:
        ax.text(pad + 0.03, y + block_h / 2 + 0.02, comparison.protocols[protocol], ha="left", va="center",
                fontsize=9, fontweight="bold", color="0.15", gid=f"block|{protocol}")
        y += block_h
        block = table[table["protocol"] == protocol]
        for metric in metrics:
            ax.text(pad + 0.12, y + row_h / 2, metric, ha="left", va="center", fontsize=9)
            for j, model in enumerate(labels):
                cell = block[(block["metric"] == metric) & (block["model"] == model)]
                if cell.empty:
                    continue
                cell = cell.iloc[0]
                x = x0 + cell_w * j
                if cell["mark"] in ("best", "tied"):
                    ax.add_patch(Rectangle((x + 0.03, y + 0.03), cell_w - 0.06, row_h - 0.06, lw=0,
                                           facecolor="#b9e4b9" if cell["mark"] == "best" else "#e6f5e6",
                                           gid=f"shade|{protocol}|{model}|{metric}"))
                same = pd.isna(cell["std"]) or cell.get("identical", False)      # one seed, or one run
                std = "" if same else f" ± {cell['std']:.{digits}f}"
                ax.text(x + cell_w / 2, y + 0.18, f"{cell['mean']:.{digits}f}{std}", ha="center", va="center",
                        fontsize=9, fontweight="bold" if cell["mark"] == "best" else "normal",
                        gid=f"cell|{protocol}|{model}|{metric}")
                ax.text(x + cell_w / 2, y + 0.37, f"[{cell['ci_low']:.{digits}f}, {cell['ci_high']:.{digits}f}]",
                        ha="center", va="center", fontsize=7, color="0.3", gid=f"ci|{protocol}|{model}|{metric}")
            y += row_h
        ax.plot([pad, right], [y, y], color="0.5", lw=0.7)
    ax.text(pad + 0.03, y + block_h / 2 + 0.02, "Training", ha="left", va="center", fontsize=9, fontweight="bold",
            color="0.15")
    y += block_h
    for name in info_rows:
        ax.text(pad + 0.12, y + info_h / 2, name, ha="left", va="center", fontsize=8.5, color="0.2")
        for j, row in enumerate(models.itertuples()):
            color = "0.2"
            if name == "seeds":
                text = "one fit" if row.closed_form else f"{row.seeds}: {row.seed_list}"
            elif name == "epochs (best)":
                text = epochs_text(row)
                if capped[row.model]:
                    text += f", capped {capped[row.model]}/{row.seeds}"
                    color = "tab:red"
            elif name == "training time per run":
                text = seconds(row.train_seconds)
            else:
                text = str(row.device)
            ax.text(x0 + cell_w * (j + 0.5), y + info_h / 2, text, ha="center", va="center", fontsize=8,
                    color=color, gid=f"info|{name}|{row.model}")
        y += info_h
    ax.plot([pad, right], [y, y], color="black", lw=1.0)
    y += 0.12
    y = text_lines(ax, pad, y, caption_lines, "0.3", "caption", line_h)
    text_lines(ax, pad, y, left_lines, "tab:red", "left_out", line_h)
    save_figure(fig, png, 150)
    return fig


def model_text(model: str, template: str) -> str:
    """A Markdown table's model cell: 'EASE (`train_ease`)'; a label that already names its
    template (two templates of one model) is not given it twice."""
    return f"{model}" if model.endswith(f"({template})") else f"{model} (`{template}`)"


def seeds_text(seeds: int, closed_form: bool) -> str:
    """A model's seed count: '5', or 'one fit for every seed (closed form)' where the model reads
    no seed and was fitted once."""
    return "one fit for every seed (closed form)" if closed_form else str(seeds)


def epochs_text(row, compact: bool = True) -> str:
    """A model row's epochs and best epochs, '31-40 (35)' (``compact``: ranges over seeds, else
    every run's); a closed-form model's grid and best setting, 'grid 12 (best 6)'."""
    if row.closed_form:
        return f"grid {_span(row.epoch_list)} (best {_span(row.best_epoch_list)})"
    if compact:
        return f"{_span(row.epoch_list)} ({_span(row.best_epoch_list)})"
    return f"{row.epoch_list} ({row.best_epoch_list})"


def _span(values: str) -> str:
    """'3 3 3' -> '3'; '31 40 35' -> '31-40' (the range over seeds); '?' where none is known."""
    numbers = [int(v) for v in str(values).split() if v.isascii() and v.isdigit()]
    if not numbers:
        return "?"
    low, high = min(numbers), max(numbers)
    return str(low) if low == high else f"{low}-{high}"
