"""The comparison's table: per model, protocol and metric the mean and standard deviation over
seeds, a 95 % bootstrap interval and the paired test against the best model, all computed from
each finished run's saved per-user test ranks; written as CSV, JSON, Markdown and a figure."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from esapr.comparison.figure import plot_comparison
from esapr.comparison.plan import Run
from esapr.comparison.pool import RunOutcome
from esapr.comparison.stats import ALPHA, N_BOOTSTRAP, bootstrap_intervals, compare_models
from esapr.errors import UserError
from esapr.experiment import Experiment
from esapr.families import model_label
from esapr.files import atomic_write_text
from esapr.metrics import FULL, metric_names, per_user

DISPLAY_METRICS = ("NDCG@10", "Recall@10", "NDCG@20", "Recall@20", "MRR")   # the table's rows by default
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
    ci_low, ci_high, seeds, p_value, p_holm, mark; ``models``: one row per model with its seeds,
    epochs, best epochs, training time, device and capped runs; ``runs``: every planned run, those
    left out with the reason (a finished one with its test metrics)."""
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
        lines = ["| model (template) | seeds | " + " | ".join(head) + " | epochs (best) | training s per run |",
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
            lines.append(f"| {model.model} (`{model.template}`) | {model.seeds} | " + " | ".join(cells) +
                         f" | {model.epoch_list} ({model.best_epoch_list}){capped} | {model.train_seconds:.0f} |")
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
            lines.append(f"  {row.model:<{width}} seeds {row.seed_list}: epochs {row.epoch_list} (best "
                         f"{row.best_epoch_list}), {row.train_seconds:.0f} s per run on {row.device}{capped}")
        if self.left_out:
            lines += ["left out:"] + [f"  {line}" for line in self.left_out_lines()]
        return "\n".join(lines)


def _mean_std(row: pd.Series, digits: int) -> str:
    """'0.2950 ± 0.0049'; the mean alone for one seed (no std)."""
    std = "" if np.isnan(row["std"]) else f" ± {row['std']:.{digits}f}"
    return f"{row['mean']:.{digits}f}{std}"


def aggregate(outcomes: list[RunOutcome], labels: dict[str, str], metric_ks: Sequence[int] | None = None,
              protocols: dict[str, str] | None = None, settings: dict | None = None,
              n_boot: int = N_BOOTSTRAP) -> Comparison:
    """The comparison of the finished runs among ``outcomes`` (``labels``: template -> model
    name), from each run's per-user test ranks (tables/test_ranks.csv), paired by user.
    ``metric_ks``: the cut-offs of the metrics (default: those the runs were trained with); each
    run's test metrics are read or computed from its ranks (``Experiment.test_metrics``)."""
    included = [o for o in outcomes if o.included]
    if not included:
        raise UserError("no finished runs to compare; left out: " + "; ".join(o.describe() for o in outcomes))
    experiments = {o.path: Experiment(o.path) for o in included}
    if metric_ks is None:
        metric_ks = {int(k) for e in experiments.values() for k in e.read_config().get("metric_ks", [])}
    metrics = metric_names(metric_ks, full_ranking=False)
    ranks: dict[str, list[pd.DataFrame]] = {}
    users = None
    for outcome in included:
        frame = experiments[outcome.path].read_ranks().sort_values("user", kind="stable")
        if users is None:
            users = frame["user"].to_numpy()
        elif len(frame) != len(users) or not np.array_equal(frame["user"].to_numpy(), users):
            raise UserError(f"{outcome.path}: its test users differ from {included[0].path}'s; the runs are not "
                            f"on the same data and cannot be paired")
        ranks.setdefault(outcome.template, []).append(frame)
    protocols = dict(protocols or {p: protocol_label(p) for p in PROTOCOLS})
    if not all((f["full_rank"] >= 0).all() for frames in ranks.values() for f in frames):
        protocols.pop("full", None)
    rows = []
    for protocol in [p for p in PROTOCOLS if p in protocols]:
        stacked = {labels[t]: np.stack([f[RANK_COLUMNS[protocol]].to_numpy() for f in frames])
                   for t, frames in ranks.items()}
        values = {model: np.stack([per_user(r, metric) for metric in metrics]) for model, r in stacked.items()}
        bounds = {model: bootstrap_intervals(v, n_boot=n_boot) for model, v in values.items()}   # [metrics, S, U]
        for i, metric in enumerate(metrics):
            intervals = {model: (float(low[i]), float(high[i])) for model, (low, high) in bounds.items()}
            for stats in compare_models({model: v[i] for model, v in values.items()}, intervals=intervals):
                rows.append({"protocol": protocol, "metric": metric, **dataclasses.asdict(stats)})
    tested = [FULL * (p == "full") + m for p in PROTOCOLS if p in protocols for m in metrics]
    runs = [dataclasses.replace(o, results={**(o.results or {}), "test": experiments[o.path].test_metrics(tested)})
            if o.included else o for o in outcomes]
    dataset = str((included[0].results or {}).get("dataset", "?"))
    return Comparison(pd.DataFrame(rows), _model_rows(runs, labels), runs, protocols, dataset, int(len(users)),
                      dict(settings or {}))


def _model_rows(runs: list[RunOutcome], labels: dict[str, str]) -> pd.DataFrame:
    """One row per model: its seeds, epochs, best epochs, training time, device, capped runs."""
    rows = []
    for template in dict.fromkeys(o.template for o in runs if o.included):
        done = [o for o in runs if o.included and o.template == template]
        res = [o.results or {} for o in done]
        rows.append({
            "model": labels[template], "template": template, "seeds": len(done),
            "seed_list": " ".join(str(o.seed) for o in done),
            "epochs": float(np.mean([r.get("epochs", 0) for r in res])),
            "epoch_list": " ".join(str(r.get("epochs")) for r in res),
            "best_epoch": float(np.mean([r.get("best_epoch", 0) for r in res])),
            "best_epoch_list": " ".join(str(r.get("best_epoch")) for r in res),
            "train_seconds": float(np.mean([r.get("train_seconds", 0.0) for r in res])),
            "device": ", ".join(sorted({str(r.get("device", "?")) for r in res})),
            "capped": sum(o.capped for o in done),
            "paths": " ".join(str(o.path) for o in done)})
    return pd.DataFrame(rows)


def model_labels(runs: list[Run]) -> dict[str, str]:
    """template -> the model's name in the table (the template's name added where two agree)."""
    labels: dict[str, str] = {}
    for run in runs:
        labels.setdefault(run.template, model_label(run.config.values()))
    counts = pd.Series(list(labels.values())).value_counts()
    return {t: (label if counts[label] == 1 else f"{label} ({t})") for t, label in labels.items()}


def write_comparison(comparison: Comparison, prefix: Path, metrics: Iterable[str] | None = None) -> dict[str, Path]:
    """``prefix``.csv (one row per protocol, metric and model, with the model's runs), .json, .md
    (the table in Markdown) and .png (the table figure)."""
    prefix = Path(prefix)
    csv = comparison.table.merge(comparison.models.drop(columns=["paths"]), on="model", how="left",
                                 suffixes=("", "_model"))
    files = {kind: prefix.with_suffix("." + kind) for kind in ("csv", "json", "md", "png")}
    atomic_write_text(files["csv"], csv.to_csv(index=False))
    atomic_write_text(files["json"], json.dumps(comparison.to_dict(), indent=2))
    atomic_write_text(files["md"], comparison.markdown(metrics))
    plot_comparison(comparison, files["png"], metrics=metrics)
    comparison.files = files
    return files
