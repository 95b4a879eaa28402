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
from pathlib import Path
from typing import Iterable

import pandas as pd

from esapr.errors import UserError
from esapr.experiment import Experiment
from esapr.families import FAMILIES, model_label
from esapr.figures import save_figure, table_canvas, text_lines, wrap
from esapr.metrics import FULL, is_metric, per_user, sort_key
from esapr.progress import seconds

VAE_PREFIX = "VAE"   # models whose label starts with this are "VAE variants" (bold in the figure)



# --- reading experiment folders ------------------------------------------------------------------
def find_experiments(paths_or_root) -> list[Path]:
    """Experiment folders (holding config.json) given as folders themselves or found under roots."""
    if isinstance(paths_or_root, (str, Path)):
        items = [paths_or_root]
    elif isinstance(paths_or_root, (list, tuple)) and all(isinstance(i, (str, Path)) for i in paths_or_root):
        items = list(paths_or_root)
    else:
        raise UserError(f"expected an experiment folder, a folder of experiments or a list of them, got "
                        f"{type(paths_or_root).__name__}")
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


def _model_rank(config: dict) -> int:
    """Columns follow the registry's order of families."""
    codes = list(FAMILIES)
    code = config.get("model_code")
    return codes.index(code) if code in codes else len(codes)


def _dataset_label(config: dict, results: dict) -> str:
    """The dataset's name in tables and figures (bytes that are not text shown as U+FFFD)."""
    if results.get("dataset"):
        label = str(results["dataset"])
    elif config.get("data_file"):
        label = Path(config["data_file"]).stem
    else:
        label = str(config.get("dataset_code") or "?")
    return label.encode(errors="surrogateescape").decode(errors="replace")


def _distinct_datasets(records: list[tuple], fingerprints: list) -> list[tuple]:
    """Records whose dataset names agree but whose data differ (two files named ratings.csv) get
    the data's fingerprint in the name."""
    seen: dict[str, set] = {}
    for record, fingerprint in zip(records, fingerprints):
        seen.setdefault(record[0], set()).add(fingerprint)
    return [(f"{r[0]} ({f[:6]})" if len(seen[r[0]]) > 1 and f else r[0], *r[1:]) for r, f in zip(records, fingerprints)]


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
    if isinstance(metrics, str):
        metrics = metrics.replace(",", " ").split()
    records, paths, ranks, unreadable, fingerprints = [], [], [], [], []
    for path in find_experiments(paths_or_root):
        experiment = Experiment(path)
        try:
            config = experiment.read_config()
            results = experiment.read_results() or {}
            values = _metrics_of(experiment, results, split)
            if not values:
                continue
            # metrics only (a closed-form model's val_log row also names its setting)
            row = {str(k): float(v) for k, v in values.items() if is_metric(str(k)) and v not in (None, "")}
            record = (_dataset_label(config, results), model_label(config), path, row)
            if not all(isinstance(label, str) for label in record[:2]):
                raise TypeError(f"model or dataset name {record[:2]!r} is not text")
            rank = _model_rank(config)
        except UserError as error:     # one damaged folder must not hide the others
            unreadable.append(str(error))
            continue
        except (TypeError, ValueError, AttributeError, KeyError) as error:   # values of the wrong kind
            unreadable.append(f"{path}: damaged results or config.json ({type(error).__name__}: {error})")
            continue
        records.append(record)
        paths.append(path)
        ranks.append(rank)
        fingerprints.append(str(config.get("data_fingerprint") or ""))
    records = _distinct_datasets(records, fingerprints)
    if not records:
        damaged = f"; unreadable: {unreadable[0]}" if unreadable else ""
        raise UserError(f"no finished experiments (with {split} results) under {paths_or_root}{damaged}")
    index = _unique_labels([(d, m, p) for d, m, p, _ in records])
    available = sorted({k for *_, row in records for k in row}, key=sort_key)
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
    frame.attrs["unreadable"] = unreadable
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


def run_info(path) -> dict:
    """What a table needs to know about a run besides its metrics: epochs, best epoch, training
    seconds, device, and whether it was a pilot or stopped at num_epochs before early stopping
    ("capped": not converged)."""
    experiment = Experiment(Path(path))
    config = experiment.read_config()
    results = experiment.read_results() or {}
    epochs, limit = results.get("epochs"), config.get("num_epochs", -1)
    return {"epochs": epochs, "best_epoch": results.get("best_epoch"), "train_seconds": results.get("train_seconds"),
            "device": results.get("device"), "pilot": bool(config.get("pilot")),
            "capped": bool(epochs is not None and limit is not None and 0 < limit <= int(epochs))}


def plot_results_table(frame: pd.DataFrame, path=None, digits: int = 4, title: str | None = None):
    """A table figure laid out like the original README's result image; saved as PNG at ``path``.

    Below the metrics, each run's epochs (best epoch) and training time, so a capped run (it hit
    num_epochs before early stopping) or a pilot run is not read as a final result. Each value's
    Text artist has gid ``"cell|<dataset>|<model>|<metric>"``."""
    if frame.empty:
        raise UserError("the results table is empty")
    columns = list(frame.index)
    datasets = list(dict.fromkeys(d for d, _ in columns))
    metrics = list(frame.columns)
    marks = highlight(frame)
    paths = frame.attrs.get("paths") or []
    infos = [run_info(p) if Path(p).is_dir() else {} for p in paths] if len(paths) == len(columns) else []
    names = [str(model).replace(" (", "\n(") for _, model in columns]   # "VAE_tw (vae_seed0)": two lines
    longest = max(len(line) for name in names for line in name.splitlines())
    label_w, cell_w, row_h, pad = 1.5, max(1.05, 0.07 * longest + 0.2), 0.3, 0.15
    header_h = row_h * (1.6 if any("\n" in name for name in names) else 1)
    width = max(label_w + cell_w * len(columns) + 2 * pad, 5.2)
    cell_w = max(cell_w, min(1.6, (width - 2 * pad - label_w) / len(columns)))
    split = frame.attrs.get("split", "test")
    caption = (f"{split} split, one run per column. Bold: best VAE variant, italic: best overall (per dataset and "
               f"metric). '-': not computed by that run (its metric_ks). 'capped': the run stopped at num_epochs "
               f"before early stopping, so it may not have converged. For several seeds with intervals and "
               f"paired tests use esapr compare.")
    caption_lines = wrap(caption, width - 2 * pad, 7.5)
    title_lines = wrap(title, width - 2 * pad, 11) if title else []
    n_info = 2 if infos else 0
    height = (pad + 0.3 * len(title_lines) + row_h * (1 + len(metrics) + n_info) + header_h + 0.1
              + 0.16 * len(caption_lines) + pad)
    fig, ax = table_canvas(width, height)
    x0 = pad + label_w
    y = pad
    for line in title_lines:
        ax.text(width / 2, y + 0.15, line, ha="center", va="center", fontsize=11)
        y += 0.3
    # header: dataset groups, then models
    start = 0
    for dataset in datasets:
        count = sum(1 for d, _ in columns if d == dataset)
        ax.text(x0 + cell_w * (start + count / 2), y + row_h / 2, str(dataset), ha="center", va="center",
                fontsize=10, fontweight="bold")
        ax.plot([x0 + cell_w * start + 0.08, x0 + cell_w * (start + count) - 0.08], [y + row_h] * 2,
                color="black", lw=0.8)
        if start > 0:
            ax.plot([x0 + cell_w * start] * 2, [y + 0.05, y + header_h + row_h * (1 + len(metrics) + n_info)],
                    color="0.6", lw=0.6)
        start += count
    y += row_h
    for j, name in enumerate(names):
        ax.text(x0 + cell_w * (j + 0.5), y + header_h / 2, name, ha="center", va="center", fontsize=8.5,
                linespacing=1.1)
    y += header_h
    right = x0 + cell_w * len(columns)
    ax.plot([pad, right], [y, y], color="black", lw=1.0)
    previous_full = None
    for metric in metrics:
        full = metric.startswith("full_")
        if previous_full is not None and full != previous_full:
            ax.plot([pad, right], [y, y], color="0.4", lw=0.8)
        previous_full = full
        ax.text(pad + 0.05, y + row_h / 2, _display_metric(metric), ha="left", va="center", fontsize=9)
        for j, (dataset, model) in enumerate(columns):
            value = frame.iloc[j][metric]
            bold, italic = marks[(dataset, model, metric)]
            text = "-" if pd.isna(value) else f"{value:.{digits}f}"
            ax.text(x0 + cell_w * (j + 0.5), y + row_h / 2, text, ha="center", va="center", fontsize=9,
                    fontweight="bold" if bold else "normal", fontstyle="italic" if italic else "normal",
                    gid=f"cell|{dataset}|{model}|{metric}")
        y += row_h
    if infos:
        ax.plot([pad, right], [y, y], color="0.4", lw=0.8)
        for label, key in (("epochs (best)", "epochs"), ("training time", "time")):
            ax.text(pad + 0.05, y + row_h / 2, label, ha="left", va="center", fontsize=8.5, color="0.25")
            for j, ((dataset, model), info) in enumerate(zip(columns, infos)):
                if key == "epochs":
                    text = f"{info.get('epochs', '?')} ({info.get('best_epoch', '?')})"
                    text += " pilot" if info.get("pilot") else " capped" if info.get("capped") else ""
                    color = "tab:red" if info.get("pilot") or info.get("capped") else "0.25"
                else:
                    text = f"{seconds(info.get('train_seconds'))}, {info.get('device') or '?'}"
                    color = "0.25"
                ax.text(x0 + cell_w * (j + 0.5), y + row_h / 2, text, ha="center", va="center", fontsize=7.5,
                        color=color, gid=f"info|{key}|{dataset}|{model}")
            y += row_h
    ax.plot([pad, right], [y, y], color="black", lw=1.0)
    y += 0.1
    text_lines(ax, pad, y, caption_lines, "0.3", "caption")
    save_figure(fig, path, 150)
    return fig


def plot_curves(path, png=None, metric: str | None = None):
    """Validation ``metric`` (default NDCG@10) and training loss (of a closed-form model: the seconds
    each setting took) per epoch of one experiment, with
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
    # a closed-form model's rows are the settings of its grid (their values in the other columns)
    settings = [c for c in val.columns if c != "epoch" and not is_metric(c)]
    step = "setting" if settings else "epoch"
    best = val.loc[val[metric].idxmax()]
    top.plot([best["epoch"]], [best[metric]], marker="*", color="tab:red", ms=12, ls="none",
             label=f"best {best[metric]:.4f} @ {step} {int(best['epoch'])}")
    # a closed-form model has no loss: its epochs are the settings it fitted, each in some seconds
    lower, lower_label = ("loss", "train loss") if "loss" in train.columns else ("seconds", "fit seconds")
    bottom.plot(train["epoch"], train[lower], color="tab:orange", lw=1.4, label=lower_label)
    stage_changes = 0
    if "recover_len" in train.columns:
        stages = train["recover_len"].to_numpy()
        epochs = train["epoch"].to_numpy()
        for i in range(1, len(stages)):
            if stages[i] != stages[i - 1]:
                stage_changes += 1
                x = epochs[i] - 0.5
                for axis in (top, bottom):
                    axis.axvline(x, color="0.5", lw=0.8, ls=":")
                top.annotate(f"r={int(stages[i])}", (x, 1.0), xycoords=("data", "axes fraction"),
                             xytext=(0, 2), textcoords="offset points", fontsize=7, color="0.3",
                             ha="center", va="bottom")
    top.set_ylabel(metric)
    bottom.set_ylabel(lower)
    bottom.set_xlabel(step)
    if settings:
        bottom.set_xticks(val["epoch"], ["\n".join(f"{c.split('_')[-1]}={row[c]:g}" for c in settings)
                                         for _, row in val.iterrows()], fontsize=7)
    top.legend(loc="best", fontsize=8)
    bottom.legend(loc="upper right", fontsize=8)
    top.grid(alpha=0.3)
    bottom.grid(alpha=0.3)
    if not settings:
        from matplotlib.ticker import MaxNLocator
        bottom.xaxis.set_major_locator(MaxNLocator(integer=True))   # epochs are whole numbers
    results = experiment.read_results() or {}
    stages_note = "; dotted lines: transfer stages (recover_len r)" if stage_changes else ""
    info = run_info(path)
    status = ("; pilot run" if info["pilot"] else
              f"; capped: stopped at num_epochs {info['epochs']} before early stopping" if info["capped"] else "")
    fig.suptitle(f"{model_label(config)} on {_dataset_label(config, results)}  ({path.name}){stages_note}{status}",
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, png, 120)
    return fig


def per_user_metrics(path, k: int = 10) -> pd.DataFrame:
    """Per test user, from tables/test_ranks.csv (0-based rank of the answer: 0 = first), NDCG@k
    and Recall@k (``esapr.metrics``), sampled and (where computed) full ranking."""
    import numpy as np

    frame = Experiment(Path(path)).read_ranks()
    for prefix, column in (("", "rank"), (FULL, "full_rank")):
        rank = frame[column].to_numpy(dtype=float)
        valid = rank >= 0   # -1: not computed
        for name in (f"NDCG@{k}", f"Recall@{k}"):
            frame[prefix + name] = np.where(valid, per_user(np.maximum(rank, 0), name), np.nan)
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
        axis.axvline(k - 0.5, color="tab:red", lw=1, ls="--", label=f"cut-off @{k}: ranks 0-{k - 1} are hits")
        axis.legend(loc="upper right", fontsize=8)
        axis.set_xlabel(("rank among all unseen items" if prefix else "rank among the sampled candidates")
                        + " (0 = first)")
        axis.set_ylabel("test users")
        axis.set_title(f"{prefix}NDCG@{k} {frame[f'{prefix}NDCG@{k}'].mean():.4f}, "
                       f"{prefix}Recall@{k} {frame[f'{prefix}Recall@{k}'].mean():.4f} ({len(rank)} users)",
                       fontsize=9)
        axis.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, png, 120)
    return fig


def plot_compare_curves(comparison, png=None, metric: str = "NDCG@10"):
    """Each model's validation ``metric`` per epoch, one panel per model, one line per seed, the
    best epoch of each seed starred: how far each run got and whether it was still improving."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    models = comparison.models
    n = len(models)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    runs = {}
    for outcome in comparison.runs:
        if outcome.included:
            runs.setdefault(outcome.template, []).append(outcome)
    for axis, row in zip(axes.flat, models.itertuples()):
        for i, outcome in enumerate(runs.get(row.template, [])):
            val = pd.DataFrame(Experiment(outcome.path).read_table("val_log")).apply(pd.to_numeric, errors="coerce")
            if val.empty or metric not in val.columns:
                continue
            color = f"C{i % 10}"
            axis.plot(val["epoch"], val[metric], color=color, lw=1.2, label=f"seed {outcome.seed}")
            best = val.loc[val[metric].idxmax()]
            axis.plot([best["epoch"]], [best[metric]], marker="*", ms=9, color=color, ls="none")
        capped = f", capped {row.capped}/{row.seeds}" if row.capped else ""
        axis.set_title(f"{row.model} ({row.template}){capped}", fontsize=9, color="tab:red" if row.capped else "black")
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="lower right")
    for axis in axes.flat[n:]:
        axis.set_visible(False)
    for axis in axes[:, 0]:
        axis.set_ylabel(f"validation {metric}")
    fig.suptitle(f"{comparison.dataset}: validation {metric} per epoch (star: the epoch whose weights were tested)",
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, png, 120)
    return fig


# --- CLI -----------------------------------------------------------------------------------------
