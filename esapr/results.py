"""Result tables across experiments and plots of them (matplotlib, without pyplot).

``results_table`` reads experiment folders (``results.json``, ``tables/*.csv``, ``config.json``)
into a DataFrame: one row per experiment, indexed by (dataset, model), one column per metric.
``plot_results_table`` draws it like the original README's result image: metrics as rows, models
as columns grouped by dataset, the best VAE variant of each row in bold, the overall best in
italic. ``plot_curves`` draws one experiment's validation metric and training loss per epoch,
with ESAPR's transfer stages (changes of ``recover_len``) marked.

Figures are ``matplotlib.figure.Figure`` objects made without pyplot, so nothing here needs a
display or a GUI backend and nothing is left open in pyplot's figure list.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterable

import pandas as pd

from esapr.errors import UserError
from esapr.experiment import Experiment
from esapr.registry import FAMILIES

VAE_PREFIX = "VAE"   # models whose label starts with this are "VAE variants" (bold in the figure)

_METRIC = re.compile(r"^(full_)?(NDCG|Recall)@(\d+)$|^(full_)?MRR$")


# --- reading experiment folders ------------------------------------------------------------------
def find_experiments(paths_or_root) -> list[Path]:
    """Experiment folders (holding config.json) given as folders themselves or found under roots."""
    items = [paths_or_root] if isinstance(paths_or_root, (str, Path)) else list(paths_or_root)
    found: list[Path] = []
    for item in items:
        path = Path(item)
        if not path.exists():
            raise UserError(f"{path}: no such folder")
        if Experiment(path).config_file.is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(p.parent for p in path.rglob(Experiment.CONFIG) if p.parent != path))
        else:
            raise UserError(f"{path}: not an experiment folder or a folder of experiments")
    return list(dict.fromkeys(p.resolve() for p in found))


def model_label(config: dict) -> str:
    """The model's name in tables: the config's model_label (templates set VAE_tw, ...), else
    the family's."""
    code = config.get("model_code") or "?"
    return config.get("model_label") or (FAMILIES[code].label if code in FAMILIES else code)


def _model_rank(config: dict) -> int:
    """Columns follow the registry's order of families."""
    codes = list(FAMILIES)
    code = config.get("model_code")
    return codes.index(code) if code in codes else len(codes)


def _dataset_label(config: dict, results: dict) -> str:
    if results.get("dataset"):
        return str(results["dataset"])
    if config.get("data_file"):
        return Path(config["data_file"]).stem
    return str(config.get("dataset_code") or "?")


def _metrics_of(experiment: Experiment, results: dict, split: str) -> dict | None:
    if split == "test":
        if results.get("test"):
            return results["test"]
        rows = experiment.read_table("test_log")
        return rows[-1] if rows else None
    rows = experiment.read_table("val_log")
    if not rows:
        return None
    best = results.get("best_epoch")
    chosen = [r for r in rows if best is not None and int(float(r["epoch"])) == int(best)]
    return chosen[-1] if chosen else None


def metric_sort_key(name: str) -> tuple:
    """Sampled before full ranking; NDCG@k, Recall@k by k, then MRR; anything else last."""
    match = _METRIC.match(name)
    if not match:
        return (2, 9, 0, name)
    full = bool(match.group(1) or match.group(4))
    family = match.group(2) or "MRR"
    return (int(full), {"NDCG": 0, "Recall": 1, "MRR": 2}[family], int(match.group(3) or 0), name)


def results_table(paths_or_root, metrics: Iterable[str] | None = None, split: str = "test") -> pd.DataFrame:
    """One row per finished experiment, indexed by (dataset, model); one column per metric.

    ``paths_or_root``: an experiment folder, a folder holding experiments (searched recursively),
    or a list of either. ``split``: ``test`` (results.json / tables/test_log.csv) or ``val`` (the
    validation row at the best epoch). ``metrics``: the columns to keep, in that order (default:
    every metric found, sampled first, then full ranking). Unfinished experiments are left out.
    The folders are in ``df.attrs["paths"]`` (row order).
    """
    if split not in ("test", "val"):
        raise UserError(f"split must be test or val, got '{split}'")
    records, paths, ranks = [], [], []
    for path in find_experiments(paths_or_root):
        experiment = Experiment(path)
        config = experiment.read_config()
        results = experiment.read_results() or {}
        values = _metrics_of(experiment, results, split)
        if not values:
            continue
        row = {k: float(v) for k, v in values.items() if k != "epoch" and v not in (None, "")}
        records.append((_dataset_label(config, results), model_label(config), path, row))
        paths.append(path)
        ranks.append(_model_rank(config))
    if not records:
        raise UserError(f"no finished experiments (with {split} results) under {paths_or_root}")
    index = _unique_labels([(d, m, p) for d, m, p, _ in records])
    available = sorted({k for *_, row in records for k in row}, key=metric_sort_key)
    columns = list(metrics) if metrics is not None else available
    unknown = [m for m in columns if m not in available]
    if unknown:
        raise UserError(f"unknown metric(s) {', '.join(unknown)}; available: {', '.join(available)}")
    frame = pd.DataFrame([[row.get(m, math.nan) for m in columns] for *_, row in records],
                         index=pd.MultiIndex.from_tuples(index, names=["dataset", "model"]), columns=columns)
    order = sorted(range(len(frame)), key=lambda i: (index[i][0], ranks[i], index[i][1]))
    frame = frame.iloc[order]
    frame.attrs["paths"] = [str(paths[i]) for i in order]
    frame.attrs["split"] = split
    return frame


def _unique_labels(rows: list[tuple[str, str, Path]]) -> list[tuple[str, str]]:
    """(dataset, model) labels; the same pair twice is told apart by the experiment folder's
    name, or by group/name when the names agree too."""
    def count(labels):
        return {label: labels.count(label) for label in labels}

    plain = [(d, m) for d, m, _ in rows]
    seen = count(plain)
    named = [(d, m if seen[(d, m)] == 1 else f"{m} ({p.name})") for d, m, p in rows]
    seen_named = count(named)
    return [label if seen_named[label] == 1 else (d, f"{m} ({p.parent.name}/{p.name})")
            for label, (d, m, p) in zip(named, rows)]


def format_table(frame: pd.DataFrame, digits: int = 4) -> str:
    """The original's orientation: metrics as rows, models as columns (grouped by dataset)."""
    return frame.T.to_string(float_format=lambda v: f"{v:.{digits}f}", na_rep="-")


# --- figures -----------------------------------------------------------------------------------
def highlight(frame: pd.DataFrame) -> dict[tuple, tuple[bool, bool]]:
    """(dataset, model, metric) -> (bold, italic): within each dataset and metric, bold = the best
    VAE variant (label starting with VAE), italic = the best overall (ties all marked)."""
    marks = {}
    for metric in frame.columns:
        for dataset in dict.fromkeys(frame.index.get_level_values(0)):
            column = frame.loc[dataset, metric]
            valid = column.dropna()
            best = valid.max() if len(valid) else math.nan
            vae = valid[[str(m).startswith(VAE_PREFIX) for m in valid.index]]
            best_vae = vae.max() if len(vae) else math.nan
            for model, value in column.items():
                is_vae = str(model).startswith(VAE_PREFIX)
                marks[(dataset, model, metric)] = (bool(is_vae and value == best_vae), bool(value == best))
    return marks


def _display_metric(name: str) -> str:
    return name.replace("full_", "full ")


def plot_results_table(frame: pd.DataFrame, path=None, digits: int = 4, title: str | None = None):
    """A table figure laid out like the original README's result image; saved as PNG at ``path``.

    Each value's Text artist has gid ``"cell|<dataset>|<model>|<metric>"``."""
    from matplotlib.figure import Figure

    if frame.empty:
        raise UserError("the results table is empty")
    columns = list(frame.index)
    datasets = list(dict.fromkeys(d for d, _ in columns))
    metrics = list(frame.columns)
    marks = highlight(frame)
    label_w, cell_w, cell_h = 1.6, 1.05, 0.3
    n_rows = len(metrics) + 2
    fig = Figure(figsize=(label_w + cell_w * len(columns) + 0.2, cell_h * (n_rows + 1.6) + 0.4))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(-label_w / cell_w, len(columns) + 0.2 / cell_w)
    ax.set_ylim(n_rows + 1.6, -0.3 - (0.6 if title else 0))
    ax.axis("off")
    if title:
        ax.text(len(columns) / 2 - label_w / cell_w / 2, -0.45, title, ha="center", va="center", fontsize=11)
    # header: dataset groups, then models
    start = 0
    for dataset in datasets:
        count = sum(1 for d, _ in columns if d == dataset)
        ax.text(start + count / 2, 0.5, str(dataset), ha="center", va="center", fontsize=10, fontweight="bold")
        ax.plot([start + 0.08, start + count - 0.08], [1.0, 1.0], color="black", lw=0.8)
        if start > 0:
            ax.plot([start, start], [0.1, n_rows], color="0.6", lw=0.6)
        start += count
    for j, (_, model) in enumerate(columns):
        ax.text(j + 0.5, 1.5, str(model), ha="center", va="center", fontsize=8.5)
    ax.plot([-label_w / cell_w, len(columns)], [2.0, 2.0], color="black", lw=1.0)
    previous_full = None
    for i, metric in enumerate(metrics):
        y = i + 2.5
        full = metric.startswith("full_")
        if previous_full is not None and full != previous_full:
            ax.plot([-label_w / cell_w, len(columns)], [y - 0.5, y - 0.5], color="0.4", lw=0.8)
        previous_full = full
        ax.text(-label_w / cell_w + 0.1, y, _display_metric(metric), ha="left", va="center", fontsize=9)
        for j, (dataset, model) in enumerate(columns):
            value = frame.iloc[j][metric]
            bold, italic = marks[(dataset, model, metric)]
            text = "-" if pd.isna(value) else f"{value:.{digits}f}"
            ax.text(j + 0.5, y, text, ha="center", va="center", fontsize=9,
                    fontweight="bold" if bold else "normal", fontstyle="italic" if italic else "normal",
                    gid=f"cell|{dataset}|{model}|{metric}")
    ax.plot([-label_w / cell_w, len(columns)], [n_rows, n_rows], color="black", lw=1.0)
    split = frame.attrs.get("split", "test")
    ax.text(-label_w / cell_w + 0.1, n_rows + 0.8,
            f"{split} split; bold: best VAE variant, italic: best overall (per dataset and metric)",
            ha="left", va="center", fontsize=8, color="0.3")
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150)
    return fig


def plot_curves(path, png=None, metric: str | None = None):
    """Validation ``metric`` (default NDCG@10) and training loss per epoch of one experiment, with
    vertical lines where ESAPR's recover_len changed (a transfer stage began) and the best epoch."""
    from matplotlib.figure import Figure

    path = Path(path)
    experiment = Experiment(path)
    val = pd.DataFrame(experiment.read_table("val_log"))
    train = pd.DataFrame(experiment.read_table("train_log"))
    if val.empty or train.empty:
        raise UserError(f"{path}: no training logs yet (tables/train_log.csv, tables/val_log.csv)")
    val = val.apply(pd.to_numeric, errors="coerce")
    train = train.apply(pd.to_numeric, errors="coerce")
    config = experiment.read_config()
    if metric is None:
        metric = "NDCG@10" if "NDCG@10" in val.columns else config.get("best_metric", val.columns[1])
    if metric not in val.columns:
        raise UserError(f"{path}: metric '{metric}' not in val_log.csv; have {', '.join(val.columns[1:])}")
    fig = Figure(figsize=(8, 6))
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(val["epoch"], val[metric], color="tab:blue", lw=1.4, label=f"val {metric}")
    full = f"full_{metric}"
    if full in val.columns and val[full].notna().any():
        top.plot(val["epoch"], val[full], color="tab:cyan", lw=1.0, ls="--", label=f"val {full}")
    best = val.loc[val[metric].idxmax()]
    top.plot([best["epoch"]], [best[metric]], marker="*", color="tab:red", ms=12, ls="none",
             label=f"best {best[metric]:.4f} @ epoch {int(best['epoch'])}")
    bottom.plot(train["epoch"], train["loss"], color="tab:orange", lw=1.4, label="train loss")
    if "recover_len" in train.columns:
        stages = train["recover_len"].to_numpy()
        epochs = train["epoch"].to_numpy()
        for i in range(1, len(stages)):
            if stages[i] != stages[i - 1]:
                x = epochs[i] - 0.5
                for axis in (top, bottom):
                    axis.axvline(x, color="0.5", lw=0.8, ls=":")
                top.annotate(f"r={int(stages[i])}", (x, 1.0), xycoords=("data", "axes fraction"),
                             xytext=(0, 2), textcoords="offset points", fontsize=7, color="0.3",
                             ha="center", va="bottom")
    top.set_ylabel(metric)
    bottom.set_ylabel("loss")
    bottom.set_xlabel("epoch")
    top.legend(loc="best", fontsize=8)
    bottom.legend(loc="upper right", fontsize=8)
    top.grid(alpha=0.3)
    bottom.grid(alpha=0.3)
    results = experiment.read_results() or {}
    stages_note = "; dotted lines: transfer stages (recover_len r)" if "recover_len" in train.columns else ""
    fig.suptitle(f"{model_label(config)} on {_dataset_label(config, results)}  ({path.name}){stages_note}",
                 fontsize=10)
    fig.tight_layout()
    if png is not None:
        Path(png).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png, dpi=120)
    return fig


def per_user_metrics(path, k: int = 10) -> pd.DataFrame:
    """Per test user, from tables/test_ranks.csv (0-based rank of the answer: 0 = first):
    NDCG@k = 1/log2(rank+2) and Recall@k = [rank < k], sampled and (where present) full ranking."""
    import numpy as np

    frame = Experiment(Path(path)).read_ranks()
    for prefix, column in (("", "rank"), ("full_", "full_rank")):
        if column not in frame.columns:
            continue
        rank = frame[column].to_numpy(dtype=float)
        valid = rank >= 0   # -1: not computed
        hit = valid & (rank < k)
        frame[f"{prefix}NDCG@{k}"] = np.where(hit, 1.0 / np.log2(np.maximum(rank, 0) + 2), np.where(valid, 0.0, np.nan))
        frame[f"{prefix}Recall@{k}"] = np.where(valid, hit.astype(float), np.nan)
    return frame


def plot_rank_distribution(path, png=None, k: int = 10):
    """Histograms of the test users' ranks of their held-out item: among the sampled candidates
    and (where computed) among all unseen items, with the cut-off k marked."""
    import numpy as np
    from matplotlib.figure import Figure

    frame = per_user_metrics(path, k)
    columns = [c for c in ("rank", "full_rank") if c in frame.columns and (frame[c] >= 0).any()]
    fig = Figure(figsize=(4.2 * len(columns) + 0.6, 3.6))
    axes = fig.subplots(1, len(columns), squeeze=False)[0]
    for axis, column in zip(axes, columns):
        prefix = "full_" if column == "full_rank" else ""
        rank = frame[column][frame[column] >= 0].to_numpy()
        top = max(int(rank.max()) + 1, k + 1)
        bins = np.unique(np.geomspace(1, top + 1, 40).astype(int)) - 1 if top > 60 else np.arange(top + 1)
        axis.hist(rank, bins=bins, color="tab:blue" if not prefix else "tab:purple", alpha=0.8)
        if top > 60:
            axis.set_xscale("symlog", linthresh=10)
        axis.axvline(k - 0.5, color="tab:red", lw=1, ls="--")
        axis.set_xlabel(("rank among all unseen items" if prefix else "rank among the sampled candidates")
                        + " (0 = first)")
        axis.set_ylabel("test users")
        axis.set_title(f"{prefix}NDCG@{k} {frame[f'{prefix}NDCG@{k}'].mean():.4f}, "
                       f"{prefix}Recall@{k} {frame[f'{prefix}Recall@{k}'].mean():.4f} ({len(rank)} users)",
                       fontsize=9)
        axis.grid(alpha=0.3)
    fig.tight_layout()
    if png is not None:
        Path(png).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png, dpi=120)
    return fig


# --- CLI -----------------------------------------------------------------------------------------
def cmd_results(argv: list[str]) -> int:
    """esapr results [--root ROOT ...] [--png FILE] [--split test|val] [--curves DIR] [--metrics M ...]"""
    from esapr.cli import parse_options

    overrides, flags = parse_options(argv, extra=("root", "png", "split", "curves", "metrics", "digits"))
    if overrides:
        raise UserError("usage: esapr results [--root ROOT ...] [--png FILE] [--split test|val] [--curves DIR] "
                        "[--metrics NDCG@10 Recall@10 ...] [--digits 4]")
    root = flags.get("root", "experiments")
    roots = root if isinstance(root, list) else [root]
    metrics = flags.get("metrics")
    if isinstance(metrics, str):
        metrics = metrics.replace(",", " ").split()
    try:
        digits = int(flags.get("digits", 4))
    except ValueError:
        raise UserError(f"--digits expects a whole number, got '{flags['digits']}'") from None
    frame = results_table(roots, metrics=metrics, split=flags.get("split", "test"))
    print(format_table(frame, digits))
    if flags.get("png"):
        plot_results_table(frame, flags["png"], digits=digits)
        print(f"table figure: {flags['png']}")
    if flags.get("curves"):
        folder = Path(flags["curves"])
        for (dataset, model), path in zip(frame.index, frame.attrs["paths"]):
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{dataset}_{model}")
            plot_curves(path, folder / f"curves_{name}.png")
        print(f"learning curves: {folder}/curves_*.png")
    return 0
