"""``esapr compare``: train templates x seeds, then aggregate what a researcher can trust.

One run of one seed cannot tell models apart on a small dataset, so a comparison trains every
(template, seed) into its own experiment folder (``<template>_seed<N>``), with one shared set of
``metric_ks``, and reports per model and metric the mean and standard deviation over seeds, a 95 %
bootstrap interval over test users and seeds, and a paired test of every model against the best
one on the per-user test values (Wilcoxon signed-rank, Holm-corrected across models).

A seed sets every seed a run uses (model init, data loader, training negatives); the evaluation
negatives stay fixed, so all runs rank the same candidates for the same users and are paired.

Folders are reused and never silently replaced: a finished run with the same options is reused,
an unfinished one resumed, a finished one whose epoch limit was raised is extended (as
``esapr train --resume --num_epochs N``), and one whose saved options differ is refused with both
values named (``plan_run``, also used by the notebooks).

A template written ``train_meantime:1`` runs only the first of the seeds (a slow model beside fast
ones); its runs are the same a separate compare of it would train.

    esapr.compare(["train_vae", "train_sas"], seeds=[0, 1, 2], dataset_code="ml-100k")
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from esapr.config import RUN_ONLY, Config, build_config, config_differences, describe_differences
from esapr.errors import UserError, first_line
from esapr.experiment import Experiment, experiment_path
from esapr.files import atomic_write_text

SEED_OPTIONS = ("model_init_seed", "dataloader_random_seed", "train_negative_sampling_seed")
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
DISPLAY_METRICS = ("NDCG@10", "Recall@10", "NDCG@20", "Recall@20", "MRR")   # the table's rows by default
PROTOCOLS = ("full", "sampled")                                             # full ranking first
ALPHA = 0.05
N_BOOTSTRAP = 2000
CLI_HINT = "choose another --experiment_group, or pass --overwrite to train it again"


# --- what to do with one experiment folder ---------------------------------------------------------
@dataclass(frozen=True)
class RunPlan:
    """``action``: start | resume | extend | reuse | overwrite; ``config`` carries the matching
    resume/overwrite/num_epochs; ``reason`` says why in one line."""
    action: str
    config: Config
    reason: str

    @property
    def path(self) -> Path:
        return experiment_path(self.config)


def plan_run(config: Config, overwrite: bool = False, hint: str = CLI_HINT) -> RunPlan:
    """Decide what training ``config`` does with its folder, before anything is written.

    A folder whose saved options differ from ``config`` (other than run-only options) is refused
    with a UserError naming each option with both values, followed by ``hint``. The epoch limit
    may differ: a finished run that hit its old limit is extended to a higher one; one that
    stopped early (or ran exactly the epochs asked) is reused; one asked for fewer epochs than it
    already ran is refused."""
    experiment = Experiment(experiment_path(config))
    status = experiment.status()
    plain = dataclasses.replace(config, resume=False, overwrite=False)
    if status is None and not experiment.config_file.is_file():
        return RunPlan("start", plain, "nothing there yet")
    if overwrite:
        return RunPlan("overwrite", dataclasses.replace(plain, overwrite=True), "asked to train again")
    saved = experiment.read_config()
    changed = config_differences(saved, config, ignore=RUN_ONLY | {"num_epochs"})
    if changed:
        raise UserError(f"{experiment.path} holds a {status or 'started'} run with other options: "
                        f"{describe_differences(changed)}; {hint}")
    if status == "finished":
        results = experiment.read_results() or {}
        done, before, now = int(results.get("epochs", 0)), int(saved.get("num_epochs", -1)), config.num_epochs
        if 0 < now < done:
            raise UserError(f"{experiment.path} holds a finished run of {done} epochs, more than num_epochs {now}; "
                            f"ask for num_epochs {before if before >= done or before < 0 else done} to reuse it, "
                            f"or {hint}")
        # done > before > 0: extended by hand (esapr train --resume --num_epochs N keeps config.json's limit)
        hit_limit = before > 0 and done >= before
        if now in (before, done) or not hit_limit:
            return RunPlan("reuse", config, f"finished ({done} epochs)" if hit_limit or now == done
                           else f"finished (stopped early at epoch {done})")
        if not experiment.recent_checkpoint.is_file():
            raise UserError(f"{experiment.path}: the finished run stopped at num_epochs {done} and has no "
                            f"checkpoint to extend to {now}; {hint}")
        return RunPlan("extend", dataclasses.replace(plain, resume=True),
                       f"finished at num_epochs {done}; extending to {'early stopping' if now < 0 else now}")
    if experiment.recent_checkpoint.is_file():
        return RunPlan("resume", dataclasses.replace(plain, resume=True), f"unfinished ({status}); resuming")
    return RunPlan("overwrite", dataclasses.replace(plain, overwrite=True),
                   f"unfinished ({status}) without a checkpoint; starting again")


def train_planned(plan: RunPlan, progress: Any = "auto") -> dict:
    """Carry out a plan in this process; the results (reused: read from the folder)."""
    if plan.action == "reuse":
        return Experiment(plan.path).read_results() or {}
    from esapr.training.trainer import train
    return train(plan.config, progress=progress)


# --- the runs of a comparison ------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """One (template, seed): its config and the options its ``esapr train`` command gives."""
    template: str
    seed: int
    config: Config
    options: dict[str, Any]

    @property
    def path(self) -> Path:
        return experiment_path(self.config)

    @property
    def name(self) -> str:
        return self.config.experiment_name

    def command(self, plan: RunPlan | None = None) -> list[str]:
        """The ``esapr train`` command of this run (with --resume/--overwrite as planned)."""
        argv = ["esapr", "train", "--templates", self.template]
        for name, value in self.options.items():
            argv += [f"--{name}", *_cli_values(value)]
        if plan is not None and plan.action in ("resume", "extend"):
            argv.append("--resume")
        if plan is not None and plan.action == "overwrite":
            argv.append("--overwrite")
        return argv


def _cli_values(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    if isinstance(value, bool):
        return ["true" if value else "false"]
    return ["none" if value is None else str(value)]


def plan_runs(templates: Sequence[str], seeds: Sequence[int], overrides: dict[str, Any] | None = None) -> list[Run]:
    """Every (template, seed) run, validated before anything is trained. All runs share one set of
    metric_ks (every template's, unless given), so every model has every metric."""
    overrides = dict(overrides or {})
    for name in ("resume", "templates"):
        overrides.pop(name, None)
    templates = list(templates)
    if not templates:
        raise UserError("compare needs templates: --templates train_vae train_sas ...")
    seeds = [_seed(s) for s in seeds]
    if not seeds:
        raise UserError("compare needs at least one seed: --seeds 0 1 2")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"a seed is named twice in --seeds {' '.join(map(str, seeds))}")
    limited = [_seed_limit(str(entry), len(seeds)) for entry in templates]
    templates = [template for template, _ in limited]
    if len(set(templates)) != len(templates):
        raise UserError(f"a template is named twice in --templates {' '.join(map(str, templates))}")
    for name in ("experiment_name",) + SEED_OPTIONS:
        if name in overrides:
            raise UserError(f"compare sets {name} itself (from --seeds and the template); drop --{name} "
                            f"(--experiment_group keeps a comparison apart)")
    overrides.pop("overwrite", None)
    bases = {t: build_config([t], overrides) for t in templates}
    if "metric_ks" not in overrides:
        overrides["metric_ks"] = sorted({k for config in bases.values() for k in config.metric_ks})
    runs = []
    for template, count in limited:
        base = bases[template]
        for seed in seeds[:count]:
            name = f"{base.experiment_name}_seed{seed}" + ("_pilot" if base.pilot else "")
            options = {**overrides, "experiment_name": name, **{option: seed for option in SEED_OPTIONS}}
            config = build_config([template], options)
            runs.append(Run(template, seed, config, {k: getattr(config, k) for k in options}))
    return runs


def _seed_limit(entry: str, n_seeds: int) -> tuple[str, int]:
    """``train_meantime:1`` -> (train_meantime, 1): a template that runs only the first N of
    --seeds (a slow model beside fast ones); a bare name runs them all."""
    template, colon, count = entry.rpartition(":")
    if not colon or not count.isdigit():     # no count (or a Windows path such as C:\\t.yaml)
        return entry, n_seeds
    if not 1 <= int(count) <= n_seeds:
        raise UserError(f"--templates {entry}: the number after ':' is how many of the {n_seeds} seeds "
                        f"{template} runs; allowed: 1 to {n_seeds}")
    return template, int(count)


def _seed(value: Any) -> int:
    try:
        seed = int(value)
    except (TypeError, ValueError):
        raise UserError(f"--seeds expects whole numbers, got '{value}'") from None
    if seed < 0:
        raise UserError(f"--seeds expects numbers >= 0, got {seed}")
    return seed


# --- running them -----------------------------------------------------------------------------------
@dataclass
class RunOutcome:
    """What one run is after this call. ``state``: finished | failed | pilot | running |
    interrupted | missing | needs more epochs; only ``finished`` runs enter the table."""
    template: str
    seed: int
    path: Path
    state: str
    action: str = "none"          # what this call did: reused, trained, resumed, extended, overwritten, none
    seconds: float = 0.0          # wall seconds this call spent on it
    results: dict | None = None
    capped: bool = False          # reached num_epochs before early stopping
    note: str = ""

    @property
    def included(self) -> bool:
        return self.state == "finished"

    def describe(self) -> str:
        return f"{self.path.name} ({self.state}{': ' + self.note if self.note else ''})"


DONE = {"start": "trained", "resume": "resumed", "extend": "extended", "overwrite": "overwritten", "reuse": "reused"}


def _outcome(run: Run, action: str = "none", seconds: float = 0.0, note: str = "",
             plan: RunPlan | None = None) -> RunOutcome:
    """The run's state as its folder shows it."""
    experiment = Experiment(run.path)
    status = experiment.status()
    outcome = RunOutcome(run.template, run.seed, run.path, "missing", action, seconds, note=note)
    if status is None:
        outcome.state = "failed" if note else "missing"
        outcome.note = note or "not trained yet"
        return outcome
    if status != "finished":
        outcome.state = "failed" if note else status
        return outcome
    if plan is not None and plan.action == "extend":     # aggregate only: not the run asked for
        outcome.state, outcome.note = "needs more epochs", plan.reason
        return outcome
    outcome.results = experiment.read_results() or {}
    saved = experiment.read_config()
    outcome.state = "pilot" if saved.get("pilot") and not run.config.pilot else "finished"   # a pilot compare shows pilots
    limit = run.config.num_epochs
    outcome.capped = limit > 0 and int(outcome.results.get("epochs", 0)) >= limit
    return outcome


def _threads_per_job(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // jobs)


def run_all(runs: list[Run], plans: list[RunPlan], jobs: int = 1, progress: Any = "auto",
            log_folder: Path | None = None, say=print) -> list[RunOutcome]:
    """Train what the plans ask: in this process one after another (jobs 1), or as ``jobs``
    ``esapr train`` subprocesses at once, each with cores // jobs threads and its output in
    ``log_folder/<run>.log``. A failed run is recorded and the others go on."""
    outcomes: dict[int, RunOutcome] = {}
    todo = []
    for i, (run, plan) in enumerate(zip(runs, plans)):
        if plan.action == "reuse":
            outcomes[i] = _outcome(run, "reused")
        else:
            todo.append(i)
    if jobs <= 1:
        for n, i in enumerate(todo, 1):
            run, plan = runs[i], plans[i]
            say(f"[{n}/{len(todo)}] {run.template} seed {run.seed}: {plan.reason} -> {run.path}")
            start = time.perf_counter()
            note = ""
            try:
                train_planned(plan, progress)
            except (KeyboardInterrupt, UserError):   # bad input is the same for every run: stop
                raise
            except Exception as error:    # one failed run (out of memory, NaN, ...) must not end the comparison
                note = first_line(error)
                say(f"    failed: {note}")
            outcomes[i] = _outcome(run, DONE[plan.action], time.perf_counter() - start, note)
        return [outcomes[i] for i in range(len(runs))]
    log_folder = Path(log_folder or tempfile.mkdtemp(prefix="esapr-compare-"))
    log_folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(_threads_per_job(jobs)),
           "MKL_NUM_THREADS": str(_threads_per_job(jobs)), "PYTHONWARNINGS": "ignore"}
    waiting, active = list(todo), {}
    try:
        while waiting or active:
            while waiting and len(active) < jobs:
                i = waiting.pop(0)
                run, plan = runs[i], plans[i]
                log = log_folder / f"{run.path.parent.name}-{run.name}.log"
                handle = open(log, "w")
                argv = [sys.executable, "-m", "esapr", *run.command(plan)[1:]]
                process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           env=env)
                active[i] = (process, handle, log, time.perf_counter())
                say(f"[started] {run.template} seed {run.seed}: {plan.reason} (log {log})")
            time.sleep(0.2)
            for i, (process, handle, log, start) in list(active.items()):
                if process.poll() is None:
                    continue
                handle.close()
                del active[i]
                run, plan = runs[i], plans[i]
                note = "" if process.returncode == 0 else _last_error(log, process.returncode)
                outcomes[i] = _outcome(run, DONE[plan.action], time.perf_counter() - start, note)
                say(f"[{'done' if not note else 'failed'}] {run.template} seed {run.seed} "
                    f"in {outcomes[i].seconds:.0f} s{': ' + note if note else ''}")
    finally:
        for process, handle, _, _ in active.values():   # interrupted: stop the runs this call started
            process.terminate()
            process.wait()
            handle.close()
    return [outcomes[i] for i in range(len(runs))]


def _last_error(log: Path, code: int) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("esapr: error:")]
    last = errors[-1] if errors else (lines[-1] if lines else "")
    return f"exit {code}: {last[:200]}" if last else f"exit {code}"


# --- statistics -------------------------------------------------------------------------------------
def metric_values(ranks: np.ndarray, metric: str) -> np.ndarray:
    """Per-user values of ``metric`` from 0-based ranks (any shape), as the trainer defines them:
    NDCG@k = 1/log2(rank+2) if rank < k else 0, Recall@k = [rank < k], MRR = 1/(rank+1)."""
    rank = np.asarray(ranks, dtype=float)
    if metric == "MRR":
        return 1.0 / (rank + 1.0)
    family, _, k = metric.partition("@")
    if family == "NDCG" and k.isdigit():
        return np.where(rank < int(k), 1.0 / np.log2(rank + 2.0), 0.0)
    if family == "Recall" and k.isdigit():
        return (rank < int(k)).astype(float)
    raise UserError(f"unknown metric '{metric}'; use NDCG@k, Recall@k or MRR")


def bootstrap_interval(values: np.ndarray, level: float = 0.95, n_boot: int = N_BOOTSTRAP,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean of ``values[seeds, users]``, resampling test users and
    seeds (both with replacement), so it holds both the test-set and the training noise."""
    low, high = bootstrap_intervals(np.atleast_2d(np.asarray(values, dtype=float))[None], level, n_boot, seed)
    return float(low[0]), float(high[0])


def bootstrap_intervals(values: np.ndarray, level: float = 0.95, n_boot: int = N_BOOTSTRAP,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``bootstrap_interval`` of each ``values[k]`` (``[metrics, seeds, users]``), all from the
    same resamples. A resample is a matrix of counts (how often each user, each seed is drawn)
    applied as one matrix product per chunk of resamples: no loop over users or metrics."""
    x = np.asarray(values, dtype=float)
    n_metrics, n_seeds, n_users = x.shape
    flat = x.reshape(n_metrics * n_seeds, n_users).T                                   # [U, K*S]
    seed_rng = np.random.default_rng([seed, 1])
    stats = []
    for users in _user_resamples(n_users, n_boot, seed):                                # [b, U] counts
        seeds = _counts(seed_rng, n_seeds, len(users))                                  # [b, S] counts
        per_seed = (users @ flat / n_users).reshape(len(users), n_metrics, n_seeds)     # [b, K, S]
        stats.append(np.einsum("bks,bs->bk", per_seed, seeds) / n_seeds)
    low, high = np.percentile(np.concatenate(stats), [50 * (1 - level), 50 * (1 + level)], axis=0)
    return low, high


def _counts(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``size`` resamples of n items with replacement, as counts ``[size, n]`` (float32)."""
    drawn = rng.integers(0, n, size=(size, n)) + (np.arange(size) * n)[:, None]
    return np.bincount(drawn.ravel(), minlength=size * n).reshape(size, n).astype(np.float32)


_RESAMPLES: dict[tuple, list[np.ndarray]] = {}


def _user_resamples(n_users: int, n_boot: int, seed: int) -> list[np.ndarray]:
    """The user resamples in chunks of about 4M counts; kept for the next metric and model (the
    same draws for all: their intervals are comparable) when they fit in about 100 MB."""
    key = (n_users, n_boot, seed)
    if key in _RESAMPLES:
        return _RESAMPLES[key]
    rng = np.random.default_rng([seed, 0])
    chunk = max(1, min(n_boot, 4_000_000 // max(1, n_users)))
    chunks = [_counts(rng, n_users, min(chunk, n_boot - start)) for start in range(0, n_boot, chunk)]
    if n_users * n_boot <= 25_000_000:
        _RESAMPLES.clear()
        _RESAMPLES[key] = chunks
    return chunks


def paired_p_value(best: np.ndarray, other: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank test on paired per-user values (scipy); 1.0 when every pair
    is equal (nothing tells them apart)."""
    from scipy.stats import wilcoxon
    difference = np.asarray(best, dtype=float) - np.asarray(other, dtype=float)
    if not np.any(difference != 0):
        return 1.0
    return float(wilcoxon(difference, zero_method="wilcox", alternative="two-sided").pvalue)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment: the i-th smallest p times (m - i), made monotone, capped at 1."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]))
    out = np.empty_like(p)
    out[order] = adjusted
    return out


@dataclass(frozen=True)
class MetricStats:
    """One model on one metric: the table's cell and its significance mark."""
    model: str
    mean: float
    std: float
    ci_low: float
    ci_high: float
    seeds: int
    p_value: float        # paired test against the best model (nan for the best itself)
    p_holm: float
    mark: str             # best | tied (not significantly worse) | worse


def compare_models(values: dict[str, np.ndarray], alpha: float = ALPHA, n_boot: int = N_BOOTSTRAP,
                   seed: int = 0, intervals: dict[str, tuple[float, float]] | None = None) -> list[MetricStats]:
    """``values[model]`` = per-user values ``[seeds, users]`` of one metric (users aligned across
    models). The best model has the highest mean; every other one is tested against it on the
    per-user values averaged over its seeds, Holm-corrected across the models. ``intervals``:
    the bootstrap intervals when already computed (``bootstrap_intervals`` of many metrics)."""
    models = list(values)
    arrays = {m: np.atleast_2d(np.asarray(values[m], dtype=float)) for m in models}
    means = {m: float(a.mean()) for m, a in arrays.items()}
    best = max(models, key=lambda m: means[m])
    others = [m for m in models if m != best]
    per_user = {m: a.mean(axis=0) for m, a in arrays.items()}
    raw = [paired_p_value(per_user[best], per_user[m]) for m in others]
    adjusted = dict(zip(others, holm(raw))) if others else {}
    raw = dict(zip(others, raw))
    out = []
    for m in models:
        a = arrays[m]
        low, high = intervals[m] if intervals else bootstrap_interval(a, n_boot=n_boot, seed=seed)
        seed_means = a.mean(axis=1)
        std = float(seed_means.std(ddof=1)) if len(seed_means) > 1 else float("nan")
        if m == best:
            mark, p, ph = "best", float("nan"), float("nan")
        else:
            p, ph = raw[m], float(adjusted[m])
            mark = "tied" if ph >= alpha else "worse"
        out.append(MetricStats(m, means[m], std, low, high, len(seed_means), p, ph, mark))
    return out


# --- aggregation ------------------------------------------------------------------------------------
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
    left out with the reason."""
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

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "test_users": self.n_users, "protocols": self.protocols,
                "settings": self.settings, "alpha": ALPHA,
                "table": _records(self.table), "models": _records(self.models),
                "runs": [{"template": r.template, "seed": r.seed, "path": str(r.path), "state": r.state,
                          "action": r.action, "seconds": round(r.seconds, 2), "capped": r.capped, "note": r.note,
                          **({k: r.results.get(k) for k in ("epochs", "best_epoch", "train_seconds", "device")}
                             if r.results else {})} for r in self.runs]}

    def _shown(self, metrics: Iterable[str] | None) -> list[str]:
        return [m for m in (metrics or DISPLAY_METRICS) if m in self.metrics()] or self.metrics()[:4]

    def _row(self, protocol: str, metric: str, model: str) -> pd.Series:
        table = self.table
        return table[(table["protocol"] == protocol) & (table["metric"] == metric) & (table["model"] == model)].iloc[0]

    def markdown(self, metrics: Iterable[str] | None = None, digits: int = 4) -> str:
        """The table as Markdown (for a README or a paper's notes): one row per model, the
        protocols' metrics side by side; **bold** the best, "n.s." not significantly worse."""
        metrics = self._shown(metrics)
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
        metrics = self._shown(metrics)
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


def aggregate(outcomes: list[RunOutcome], labels: dict[str, str], protocols: dict[str, str] | None = None,
              settings: dict | None = None, n_boot: int = N_BOOTSTRAP) -> Comparison:
    """The comparison of the finished runs among ``outcomes`` (``labels``: template -> model
    name), from each run's per-user test ranks (tables/test_ranks.csv), paired by user."""
    from esapr.results import metric_sort_key

    included = [o for o in outcomes if o.included]
    if not included:
        raise UserError("no finished runs to compare; left out: " + "; ".join(o.describe() for o in outcomes))
    ranks: dict[str, list[pd.DataFrame]] = {}
    users = None
    ks: set[int] = set()
    for outcome in included:
        experiment = Experiment(outcome.path)
        ks.update(int(k) for k in experiment.read_config().get("metric_ks", []))
        frame = experiment.read_ranks().sort_values("user", kind="stable")
        if users is None:
            users = frame["user"].to_numpy()
        elif len(frame) != len(users) or not np.array_equal(frame["user"].to_numpy(), users):
            raise UserError(f"{outcome.path}: its test users differ from {included[0].path}'s; the runs are not "
                            f"on the same data and cannot be paired")
        ranks.setdefault(outcome.template, []).append(frame)
    templates = list(ranks)
    results = included[0].results or {}
    metrics = sorted([f"NDCG@{k}" for k in ks] + [f"Recall@{k}" for k in ks] + ["MRR"], key=metric_sort_key)
    protocols = dict(protocols or {p: protocol_label(p) for p in PROTOCOLS})
    has_full = all((f["full_rank"] >= 0).all() for frames in ranks.values() for f in frames)
    if not has_full:
        protocols.pop("full", None)
    rows = []
    for protocol in [p for p in PROTOCOLS if p in protocols]:
        column = "full_rank" if protocol == "full" else "rank"
        stacked = {labels[t]: np.stack([f[column].to_numpy() for f in ranks[t]]) for t in templates}
        values = {model: np.stack([metric_values(r, metric) for metric in metrics]) for model, r in stacked.items()}
        bounds = {model: bootstrap_intervals(v, n_boot=n_boot) for model, v in values.items()}   # [metrics, S, U]
        for i, metric in enumerate(metrics):
            intervals = {model: (float(low[i]), float(high[i])) for model, (low, high) in bounds.items()}
            for stats in compare_models({model: v[i] for model, v in values.items()}, intervals=intervals):
                rows.append({"protocol": protocol, "metric": metric, **dataclasses.asdict(stats)})
    table = pd.DataFrame(rows)
    model_rows = []
    for template in templates:
        runs = [o for o in included if o.template == template]
        res = [o.results or {} for o in runs]
        model_rows.append({
            "model": labels[template], "template": template, "seeds": len(runs),
            "seed_list": " ".join(str(o.seed) for o in runs),
            "epochs": float(np.mean([r.get("epochs", 0) for r in res])),
            "epoch_list": " ".join(str(r.get("epochs")) for r in res),
            "best_epoch": float(np.mean([r.get("best_epoch", 0) for r in res])),
            "best_epoch_list": " ".join(str(r.get("best_epoch")) for r in res),
            "train_seconds": float(np.mean([r.get("train_seconds", 0.0) for r in res])),
            "device": ", ".join(sorted({str(r.get("device", "?")) for r in res})),
            "capped": sum(o.capped for o in runs),
            "paths": " ".join(str(o.path) for o in runs)})
    return Comparison(table, pd.DataFrame(model_rows), list(outcomes), protocols,
                      str(results.get("dataset", "?")), int(len(users)), dict(settings or {}))


# --- the command ---------------------------------------------------------------------------------------
def _labels(runs: list[Run]) -> dict[str, str]:
    """template -> the model's name in the table (the template's name added where two agree)."""
    from esapr.results import model_label
    labels = {}
    for run in runs:
        labels.setdefault(run.template, model_label(run.config.to_dict()))
    counts = pd.Series(list(labels.values())).value_counts()
    return {t: (label if counts[label] == 1 else f"{label} ({t})") for t, label in labels.items()}


def write_comparison(comparison: Comparison, prefix: Path, metrics: Iterable[str] | None = None) -> dict[str, Path]:
    """``prefix``.csv (one row per protocol, metric and model, with the model's runs), .json, .md
    (the table in Markdown) and .png (the table figure)."""
    from esapr.results import plot_comparison
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


def compare(templates: Sequence[str] | str, seeds: Sequence[int] = DEFAULT_SEEDS, jobs: int = 1,
            dry_run: bool = False, aggregate_only: bool = False, output: str | Path | None = None,
            metrics: Sequence[str] | None = None, progress: Any = "auto", say=print,
            **overrides) -> Comparison | list[str]:
    """Train every (template, seed) (reusing, resuming or extending what is there; refusing a
    folder whose saved options differ), then aggregate into ``<root>/<group>/comparison``.csv,
    .json and .png (``output``: another prefix). ``dry_run``: return (and print) each run's
    ``esapr train`` command instead; ``aggregate_only``: train nothing. ``overwrite=True`` trains
    every run again. Returns the Comparison."""
    templates = [templates] if isinstance(templates, str) else list(templates)
    seeds = [seeds] if isinstance(seeds, (int, str)) else list(seeds)
    try:
        jobs = int(jobs)
    except (TypeError, ValueError):
        raise UserError(f"--jobs expects a whole number, got '{jobs}'") from None
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    if dry_run and aggregate_only:
        raise UserError("--dry_run and --aggregate_only exclude each other")
    from esapr.config import coerce
    overwrite = coerce("overwrite", overrides.get("overwrite", False))
    runs = plan_runs(templates, seeds, overrides)
    plans = [plan_run(run.config, overwrite) for run in runs]
    first = runs[0].config
    prefix = Path(output) if output else Path(first.experiment_root) / first.experiment_group / "comparison"
    if dry_run:
        lines = []
        for run, plan in zip(runs, plans):
            if plan.action == "reuse":
                lines.append(f"# {run.path}: {plan.reason}, reused")
            else:
                lines.append(shlex.join(run.command(plan)))
        again = ["esapr", "compare", "--templates", *templates, "--seeds", *map(str, seeds)]
        for name, value in runs[0].options.items():
            if name not in ("experiment_name", "metric_ks") + SEED_OPTIONS or name in overrides:
                again += [f"--{name}", *_cli_values(value)]
        lines.append("# afterwards: " + shlex.join(again + ["--aggregate_only"]))
        for line in lines:
            say(line)
        return lines
    if aggregate_only:
        outcomes = [_outcome(run, plan=plan) for run, plan in zip(runs, plans)]
    else:
        start = time.perf_counter()
        outcomes = run_all(runs, plans, jobs, progress, prefix.parent / "compare_logs", say)
        trained = sum(o.action != "reused" for o in outcomes)
        say(f"{len(outcomes) - trained} run(s) reused, {trained} trained in {time.perf_counter() - start:.0f} s")
    settings = {"templates": templates, "seeds": seeds, "options": {k: v for k, v in runs[0].options.items()
                                                                   if k not in ("experiment_name",) + SEED_OPTIONS},
                "n_bootstrap": N_BOOTSTRAP, "test": "two-sided Wilcoxon signed-rank on per-user values "
                                                   "averaged over seeds, Holm-corrected across models",
                "pilot": first.pilot}
    protocols = {"full": protocol_label("full"),
                 "sampled": protocol_label("sampled", first.test_negative_sampler_code, first.test_negative_sample_size)}
    if not first.full_ranking:
        protocols.pop("full")
    comparison = aggregate(outcomes, _labels(runs), protocols, settings)
    write_comparison(comparison, prefix, metrics)
    return comparison


def cmd_compare(argv: list[str]) -> int:
    """esapr compare --templates T ... [--seeds 0 1 2 3 4] [--jobs N] [--dry_run | --aggregate_only] ..."""
    from esapr.cli import parse_options
    flags_known = ("seeds", "jobs", "dry_run", "aggregate_only", "output", "metrics", "quiet")
    overrides, flags = parse_options(argv, extra=flags_known)
    templates = overrides.pop("templates", None)
    if not templates:
        raise UserError("compare needs templates; usage: esapr compare --templates train_vae train_sas[:N] ... "
                        "[--seeds 0 1 2 3 4] [--jobs N] [--dry_run | --aggregate_only] [--option value ...]")
    seeds = flags.get("seeds", list(DEFAULT_SEEDS))
    seeds = seeds.replace(",", " ").split() if isinstance(seeds, str) else seeds
    metrics = flags.get("metrics")
    metrics = metrics.replace(",", " ").split() if isinstance(metrics, str) else metrics
    for name in ("dry_run", "aggregate_only", "quiet"):
        if flags.get(name) not in (None, True):
            raise UserError(f"--{name} is a flag; write it without a value")
    quiet = bool(flags.get("quiet"))
    result = compare(templates, seeds, jobs=flags.get("jobs", 1), dry_run=bool(flags.get("dry_run")),
                     aggregate_only=bool(flags.get("aggregate_only")), output=flags.get("output"), metrics=metrics,
                     progress="quiet" if quiet else "auto", say=(lambda *a: None) if quiet else print, **overrides)
    if isinstance(result, list):
        return 0
    print(result.format(metrics))
    print("\n" + "  ".join(f"{kind}: {path}" for kind, path in result.files.items()))
    failed = [o for o in result.runs if o.state == "failed"]
    if failed:
        print(f"esapr: warning: {len(failed)} of {len(result.runs)} runs failed; they are left out of the table",
              file=sys.stderr)
        return 1
    return 0


class _CallableModule(type(sys)):
    """``esapr.compare(...)`` calls the function also once ``esapr.compare`` is this module (which
    any ``import esapr.compare`` makes it)."""

    def __call__(self, *args, **kwargs):
        return compare(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
