"""The comparison's table: per model, protocol and metric the mean and standard deviation over
seeds, a 95 % bootstrap interval and the paired test against the best model, all computed from
each finished run's saved per-user test ranks; written as CSV, JSON, Markdown and a figure."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from esapr.comparison.figure import epochs_text, model_text, plot_comparison, seeds_text
from esapr.comparison.plan import CLI, Names, Run, count
from esapr.comparison.pool import RunOutcome
from esapr.comparison.stats import ALPHA, N_BOOTSTRAP, bootstrap_intervals, compare_models
from esapr.errors import UserError
from esapr.experiment import Experiment
from esapr.families import model_label
from esapr.files import atomic_write_text, refuse_links
from esapr.metrics import FULL, METRICS, metric_names, per_user
from esapr.metrics import parse as parse_metric
from esapr.options.spec import short
from esapr.progress import seconds

# what the printed table, the Markdown and the figure show by default (80 columns); CSV/JSON hold all
DISPLAY_METRICS = ("NDCG@10", "Recall@10")
PROTOCOLS = ("full", "sampled")                                             # full ranking first
RANK_COLUMNS = {"full": "full_rank", "sampled": "rank"}
RUN_RESULTS = ("epochs", "best_epoch", "train_seconds", "device", "test")    # what comparison.json keeps of a run


def protocol_label(protocol: str, sampler: str = "popular", size: int = 100) -> str:
    """The block titles: full ranking, then the sampled protocol named for what it is."""
    if protocol == "full":
        return "Full ranking (against every item the user has not seen)"
    if sampler == "popular":
        paper = ", the original paper's protocol" if size == 100 else ""
        return f"Popularity-sampled ({size} popular negatives{paper})"
    return f"Uniform-sampled ({size} random negatives)"


def _records(frame: pd.DataFrame) -> list[dict]:
    """Rows as plain dicts, NaN as None, floats unrounded (``to_json`` rounds to 10 decimals, which
    turns a small p-value into 0)."""
    return frame.astype(object).where(frame.notna(), None).to_dict(orient="records")


@dataclass
class Comparison:
    """The aggregated comparison. ``table``: one row per (protocol, metric, model) with mean, std,
    ci_low, ci_high, seeds, p_value, p_holm, mark, identical (a closed-form model: one fit for every seed);
    ``models``: one row per model with its seeds, epochs, best epochs, training time, device,
    capped runs and closed_form; ``runs``: every planned run, those left out with the reason (a
    finished one with its test metrics)."""
    table: pd.DataFrame
    models: pd.DataFrame
    runs: list[RunOutcome]
    protocols: dict[str, str]
    dataset: str
    n_users: int
    settings: dict = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def left_out(self) -> list[RunOutcome]:
        return [r for r in self.runs if not r.included]

    def left_out_lines(self) -> list[str]:
        """The runs left out, those with the same reason on one line: "missing (not trained yet):
        tisas_seed1, tisas_seed2"."""
        groups: dict[str, list[str]] = {}
        for run in self.left_out:
            groups.setdefault(f"{run.state}{' (' + run.note + ')' if run.note else ''}", []).append(run.path.name)
        return [f"{reason}: {', '.join(names)}" for reason, names in groups.items()]

    def metrics(self) -> list[str]:
        return list(dict.fromkeys(self.table["metric"]))

    def shown(self, metrics: Iterable[str] | None = None) -> list[str]:
        """The metrics a printed table or figure shows: those asked (default DISPLAY_METRICS)
        that the comparison has, else its first four."""
        return [m for m in (metrics or DISPLAY_METRICS) if m in self.metrics()] or self.metrics()[:4]

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "test_users": self.n_users, "protocols": self.protocols,
                "settings": self.settings, "alpha": ALPHA,
                "table": _records(self.table), "models": _records(self.models),
                "runs": [{"template": r.template, "seed": r.seed, "path": str(r.path), "state": r.state,
                          "action": r.action, "seconds": round(r.seconds, 2), "capped": r.capped, "note": r.note,
                          **({k: r.results.get(k) for k in RUN_RESULTS} if r.results else {})} for r in self.runs]}

    def _row(self, protocol: str, metric: str, model: str) -> pd.Series:
        table = self.table
        return table[(table["protocol"] == protocol) & (table["metric"] == metric) & (table["model"] == model)].iloc[0]

    def markdown(self, metrics: Iterable[str] | None = None, digits: int = 4) -> str:
        """The table as Markdown (for a README or a paper's notes): one row per model, the
        protocols' metrics side by side; **bold** the best, "n.s." not significantly worse."""
        metrics = self.shown(metrics)
        head = [f"{protocol} {metric}" for protocol in self.protocols for metric in metrics]
        lines = [f"{self.dataset}, {self.n_users} test users. Cells: mean ± standard deviation over seeds [95 % "
                 f"bootstrap interval over users and seeds]; **bold**: the best model; n.s.: not significantly worse "
                 f"than it (two-sided Wilcoxon on per-user values, Holm-corrected, p >= {ALPHA}); other cells are "
                 f"significantly worse. full: ranked against every unseen item; sampled: against the negatives.", "",
                 "| model (template) | seeds | " + " | ".join(head) + " | epochs (best) | training per run |",
                 "|---" * (len(head) + 4) + "|"]
        for model in self.models.itertuples():
            cells = []
            for protocol in self.protocols:
                for metric in metrics:
                    row = self._row(protocol, metric, model.model)
                    bold = "**" if row["mark"] == "best" else ""
                    tag = {"best": " best", "tied": " n.s."}.get(row["mark"], "")
                    cells.append(f"{bold}{_mean_std(row, digits)}{bold} [{row['ci_low']:.3f}, "
                                 f"{row['ci_high']:.3f}]{tag}")
            capped = f", {model.capped} capped" if model.capped else ""
            lines.append(f"| {model_text(model.model, model.template)} | {seeds_text(model.seeds, model.closed_form)} | "
                         + " | ".join(cells) + f" | {epochs_text(model, compact=False)}{capped} | "
                         f"{seconds(model.train_seconds)} |")
        if self.left_out:
            lines += ["", "Left out: " + "; ".join(self.left_out_lines()) + "."]
        return "\n".join(lines) + "\n"

    def format(self, metrics: Iterable[str] | None = None, digits: int = 4) -> str:
        """The table as text: each protocol a block, models as rows."""
        metrics = self.shown(metrics)
        lines = [f"{self.dataset}: {self.n_users} test users; mean ± std over seeds [95% bootstrap interval]; "
                 f"* best, = not significantly worse (Wilcoxon, Holm, p >= {ALPHA})"]
        width = max(len(m) for m in self.models["model"]) + 2
        for protocol, label in self.protocols.items():
            lines += ["", label]
            lines.append(" " * width + "".join(f" {m:<33}" for m in metrics))
            for model in self.models["model"]:
                cells = []
                for metric in metrics:
                    row = self._row(protocol, metric, model)
                    sign = {"best": "*", "tied": "="}.get(row["mark"], " ")
                    cells.append(f"{sign}{_mean_std(row, digits)} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
                                 .ljust(34))
                lines.append(f"{model:<{width}}" + "".join(cells))
        lines += ["", "runs:"]
        for row in self.models.itertuples():
            capped = f", {row.capped} capped at num_epochs" if row.capped else ""
            fitted = (f" (one fit for every seed, closed form): {epochs_text(row)}" if row.closed_form
                      else f": epochs {row.epoch_list} (best {row.best_epoch_list})")
            lines.append(f"  {row.model:<{width}} seed{'s' * (row.seeds > 1)} {row.seed_list}{fitted}, {seconds(row.train_seconds)} per "
                         f"run on {row.device}{capped}")
        if self.left_out:
            lines += ["left out:"] + [f"  {line}" for line in self.left_out_lines()]
        return "\n".join(lines)


def _mean_std(row: pd.Series, digits: int) -> str:
    """'0.2950 ± 0.0049'; the mean alone for one seed, or seeds that are all the same run."""
    std = "" if np.isnan(row["std"]) or row.get("identical", False) else f" ± {row['std']:.{digits}f}"
    return f"{row['mean']:.{digits}f}{std}"


def aggregate(outcomes: list[RunOutcome], labels: dict[str, str], metric_ks: Sequence[int] | None = None,
              protocols: dict[str, str] | None = None, settings: dict | None = None,
              n_boot: int = N_BOOTSTRAP) -> Comparison:
    """The comparison of the finished runs among ``outcomes`` (``labels``: template -> model
    name), from each run's per-user test ranks (tables/test_ranks.csv), paired by user.
    ``metric_ks``: the cut-offs of the metrics (default: those the runs were trained with); each
    run's test metrics are read or computed from its ranks (``Experiment.test_metrics``). A run
    whose ranks are damaged (unreadable, cut short, not whole numbers) is left out as damaged."""
    outcomes, ranks = _read_ranks(outcomes)
    included = [o for o in outcomes if o.included]
    if not included:
        raise UserError("no finished runs to compare; left out: " + "; ".join(o.describe() for o in outcomes))
    experiments = {o.path: Experiment(o.path) for o in included}
    if metric_ks is None:
        metric_ks = {int(k) for e in experiments.values() for k in e.read_config().get("metric_ks", [])}
    metrics = metric_names(metric_ks, full_ranking=False)
    by_template: dict[str, list[pd.DataFrame]] = {}
    for outcome in included:
        by_template.setdefault(outcome.template, []).append(ranks[outcome.path])
    protocols = dict(protocols or {p: protocol_label(p) for p in PROTOCOLS})
    if not all((f["full_rank"] >= 0).all() for frames in by_template.values() for f in frames):
        protocols.pop("full", None)
    identical = {labels[o.template] for o in included if o.closed_form}
    rows = []
    for protocol in [p for p in PROTOCOLS if p in protocols]:
        stacked = {labels[t]: np.stack([f[RANK_COLUMNS[protocol]].to_numpy() for f in frames])
                   for t, frames in by_template.items()}
        values = {model: np.stack([per_user(r, metric) for metric in metrics]) for model, r in stacked.items()}
        bounds = {model: bootstrap_intervals(v, n_boot=n_boot) for model, v in values.items()}   # [metrics, S, U]
        for i, metric in enumerate(metrics):
            intervals = {model: (float(low[i]), float(high[i])) for model, (low, high) in bounds.items()}
            for stats in compare_models({model: v[i] for model, v in values.items()}, intervals=intervals):
                rows.append({"protocol": protocol, "metric": metric, **dataclasses.asdict(stats),
                             "identical": stats.model in identical})
    tested = [FULL * (p == "full") + m for p in PROTOCOLS if p in protocols for m in metrics]
    runs = [dataclasses.replace(o, results={**(o.results or {}), "test": experiments[o.path].test_metrics(tested)})
            if o.included else o for o in outcomes]
    dataset = str((included[0].results or {}).get("dataset", "?"))
    n_users = len(ranks[included[0].path])
    return Comparison(pd.DataFrame(rows), _model_rows(runs, labels), runs, protocols, dataset, n_users,
                      dict(settings or {}))


def _read_ranks(outcomes: list[RunOutcome]) -> tuple[list[RunOutcome], dict[Path, pd.DataFrame]]:
    """Each finished run's test ranks sorted by user, checked; a run whose ranks are damaged
    becomes a ``damaged`` outcome. Runs on other test users than the rest cannot be paired:
    a UserError (a run holding a part of the others' users was cut short: damaged)."""
    ranks: dict[Path, pd.DataFrame] = {}
    problems: dict[Path, str] = {}
    for outcome in outcomes:
        if outcome.included:
            try:
                ranks[outcome.path] = _checked_ranks(Experiment(outcome.path))
            except UserError as error:
                problems[outcome.path] = str(error)
    if ranks:
        reference = max(ranks, key=lambda path: len(ranks[path]))       # the first of the longest
        users = ranks[reference]["user"].to_numpy()
        for path, frame in list(ranks.items()):
            if np.array_equal(frame["user"].to_numpy(), users):
                continue
            if len(frame) < len(users) and set(frame["user"]) <= set(users):
                problems[path] = (f"{Experiment(path).ranks_file()}: damaged (cut short: {len(frame)} of the "
                                  f"{len(users)} test users of {reference.name}); train it again")
                del ranks[path]
                continue
            raise UserError(f"{path}: its test users differ from {reference}'s; the runs are not on the same data "
                            f"and cannot be paired")
    outcomes = [dataclasses.replace(o, state="damaged", note=problems[o.path], results=None)
                if o.path in problems else o for o in outcomes]
    return outcomes, ranks


def _checked_ranks(experiment: Experiment) -> pd.DataFrame:
    """A run's test ranks (users as read, exactly: ``read_ranks``), refused where they cannot be
    what the run wrote: no rows, a rank that is not a whole number >= 0 (full: >= -1), a user
    twice, or fewer rows than the run's test users (config.json ``n_users``; a pilot tests one
    batch)."""
    frame = experiment.read_ranks("test")
    path = experiment.ranks_file()
    problem = None
    integer = all(pd.api.types.is_integer_dtype(frame[c]) for c in ("rank", "full_rank"))
    saved = experiment.read_config()
    n_users = count(saved.get("n_users"))
    if frame.empty:
        problem = "no rows"
    elif not integer:
        problem = "a rank that is not a whole number: cut short or edited"
    elif (frame["rank"] < 0).any() or (frame["full_rank"] < -1).any():
        problem = "a negative rank"
    elif frame["user"].duplicated().any():
        problem = f"user {frame['user'][frame['user'].duplicated()].iloc[0]!r} twice"
    elif n_users is not None and not saved.get("pilot") and len(frame) != n_users:
        problem = f"{len(frame)} rows for the run's {n_users} test users: cut short"
    if problem:
        raise UserError(f"{path}: damaged ({problem}); train it again")
    return frame.sort_values("user", kind="stable", ignore_index=True)


def _model_rows(runs: list[RunOutcome], labels: dict[str, str]) -> pd.DataFrame:
    """One row per model: its seeds, epochs, best epochs, training time, device, capped runs and
    whether it is fitted in closed form (every seed the same run)."""
    rows = []
    for template in dict.fromkeys(o.template for o in runs if o.included):
        done = [o for o in runs if o.included and o.template == template]
        res = [o.results or {} for o in done]
        epochs = [count(r.get("epochs")) for r in res]
        best = [count(r.get("best_epoch")) for r in res]
        rows.append({
            "model": labels[template], "template": template, "seeds": len(done),
            "seed_list": " ".join(str(o.seed) for o in done),
            "epochs": _mean(epochs), "epoch_list": _listing(epochs),
            "best_epoch": _mean(best), "best_epoch_list": _listing(best),
            "train_seconds": _mean([r.get("train_seconds") for r in res]),
            "device": ", ".join(sorted({str(r.get("device", "?")) for r in res})),
            "capped": sum(o.capped for o in done),
            "closed_form": all(o.closed_form for o in done),
            "paths": " ".join(str(o.path) for o in done)})
    return pd.DataFrame(rows)


def _mean(values: list[Any]) -> float:
    """The mean of the finite numbers among ``values`` (saved files may hold anything); nan if none."""
    numbers = [float(v) for v in values
               if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    return float(np.mean(numbers)) if numbers else math.nan


def _listing(values: list[int | None]) -> str:
    """'3 3 2'; '?' for a value a run did not record."""
    return " ".join("?" if v is None else str(v) for v in values)


def model_labels(runs: list[Run]) -> dict[str, str]:
    """template -> the model's name in the table (the template's name added where two agree)."""
    labels: dict[str, str] = {}
    for run in runs:
        labels.setdefault(run.template, model_label(run.config.values()))
    counts = pd.Series(list(labels.values())).value_counts()
    return {t: (label if counts[label] == 1 else f"{label} ({t})") for t, label in labels.items()}


OUTPUT_KINDS = ("csv", "json", "md", "png")


def set_name(templates: Sequence[str]) -> str:
    """The default name of a comparison's files, ``comparison_<hash of the sorted templates>``:
    compares of other template sets in one group keep their tables apart."""
    digest = hashlib.sha1("\n".join(sorted(templates)).encode(errors="surrogateescape")).hexdigest()
    return f"comparison_{digest[:8]}"


def output_files(prefix: Path) -> dict[str, Path]:
    """``prefix``.csv, .json, .md, .png (a prefix keeps its dots: ``table.v2`` -> ``table.v2.csv``)."""
    return {kind: prefix.parent / f"{prefix.name}.{kind}" for kind in OUTPUT_KINDS}


def output_prefix(output: Any, runs: list[Run], templates: Sequence[str], names: Names = CLI) -> Path:
    """Where the comparison's files go, checked before anything is trained. ``output``: a prefix
    (``out/table`` -> out/table.csv ...; a .csv/.json/.md/.png ending dropped), or a folder (one
    that exists, ``.``, ``..``, ``/`` or a path ending in '/') to hold them under the default
    name, ``set_name(templates)``; default: in the runs' group folder. Refused: a place inside a
    run folder (its files would mix with the run's), a symbolic link on the way (the group, the
    folder, a file), a file name taken by a folder, a folder this process cannot write."""
    group = runs[0].path.parent
    arg = names.arg("output")
    if output is None:
        prefix = group / set_name(templates)
    else:
        if isinstance(output, bytes) or not isinstance(output, (str, os.PathLike)):
            raise UserError(f"{arg} expects a path (a file prefix or a folder), got {short(output)}")
        text = os.fspath(output)
        if not text.strip() or "\0" in text:
            raise UserError(f"{arg} is {short(text)}; give a file prefix or a folder")
        path = Path(text)
        if text.endswith(("/", os.sep)) or path.name in ("", ".", "..") or path.is_dir():
            prefix = path / set_name(templates)
        else:
            prefix = path.with_suffix("") if path.suffix.lower() in {f".{k}" for k in OUTPUT_KINDS} else path
    files = output_files(prefix)
    refuse_links(*dict.fromkeys(run.path.parent for run in runs), prefix.parent, *files.values())
    where = prefix.parent.resolve()
    planned = {run.path.resolve() for run in runs}
    for folder in (where, *where.parents):
        if folder in planned or _is_run_folder(folder):
            raise UserError(f"{arg} {prefix}: {prefix.parent} lies inside the run folder {folder}, whose files it "
                            f"would mix with; choose a folder outside every run (default: {group})")
    for file in files.values():
        if file.exists() and not file.is_file():
            raise UserError(f"{file} exists and is not a file; choose another {arg}")
    existing = next(folder for folder in (prefix.parent, *prefix.parent.parents) if folder.exists())
    if not existing.is_dir():
        raise UserError(f"{arg} {prefix}: {existing} is a file, not a folder; choose another {arg}")
    try:                # a file made and dropped at once: what permissions alone do not tell (root, /proc, ...)
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as error:
        raise UserError(f"{arg} {prefix}: cannot write in {existing} ({error.strerror or error}); choose another "
                        f"{arg}") from None
    return prefix


def _is_run_folder(folder: Path) -> bool:
    """An experiment folder: config.json beside the run's status, models/ or tables/."""
    return (folder / "config.json").is_file() and any((folder / name).exists() for name in ("status", "models",
                                                                                             "tables"))


def check_metrics(metrics: Any, metric_ks: Sequence[int], names: Names = CLI) -> list[str] | None:
    """The metrics asked for the printed table and figure, checked before anything is trained:
    known names (``esapr.metrics.parse``), without the ``full_`` prefix (the table shows each
    metric under both protocols), at a cut-off the comparison computes. A str is one metric."""
    if metrics is None or (isinstance(metrics, (list, tuple)) and not metrics):
        return None
    asked = [metrics] if isinstance(metrics, str) else metrics
    arg = names.arg("metrics")
    if not isinstance(asked, (list, tuple)) or not all(isinstance(m, str) for m in asked):
        raise UserError(f"{arg} expects metric names such as NDCG@10, got {short(metrics)}")
    ks = " ".join(map(str, sorted(set(metric_ks))))
    known = ", ".join(f"{m.name}@k" if m.cut_off else m.name for m in METRICS.values())
    for name in asked:
        try:
            _, k, full = parse_metric(name)
        except UserError:
            raise UserError(f"{arg} {short(name)}: unknown metric; known: {known} (k: one of the metric_ks "
                            f"{ks})") from None
        if full:
            raise UserError(f"{arg} {name}: name it without '{FULL}' ({name.removeprefix(FULL)}); the table shows "
                            f"each metric under both protocols")
        if name not in metric_names(metric_ks, full_ranking=False):
            raise UserError(f"{arg} {name}: not computed by this comparison (metric_ks {ks}); add {k} to "
                            f"{names.arg('metric_ks')}")
    return list(asked)


def write_comparison(comparison: Comparison, prefix: Path, metrics: Iterable[str] | None = None) -> dict[str, Path]:
    """``prefix``.csv (one row per protocol, metric and model, with the model's runs), .json, .md
    (the table in Markdown) and .png (the table figure); never through a symbolic link."""
    prefix = Path(prefix)
    files = output_files(prefix)
    refuse_links(prefix.parent, *files.values())
    csv = comparison.table.merge(comparison.models.drop(columns=["paths"]), on="model", how="left",
                                 suffixes=("", "_model"))
    atomic_write_text(files["csv"], csv.to_csv(index=False))
    atomic_write_text(files["json"], json.dumps(comparison.to_dict(), indent=2))
    atomic_write_text(files["md"], comparison.markdown(metrics))
    plot_comparison(comparison, files["png"], metrics=metrics)
    comparison.files = files
    return files
