"""``esapr compare``: train templates x seeds, then aggregate what a researcher can trust.

One run of one seed cannot tell models apart on a small dataset, so a comparison trains every
(template, seed) into its own experiment folder (``<template>_seed<N>``) and reports per model and
metric the mean and standard deviation over seeds, a 95 % bootstrap interval over test users and
seeds, and a paired test of every model against the best one on the per-user test values
(Wilcoxon signed-rank, Holm-corrected across models).

Folders are reused and never silently replaced: a finished run that reads the same options is
reused whatever metrics are asked (they are computed from its saved ranks), an unfinished one
resumed, a finished one whose epoch limit was raised is extended (as ``esapr train --resume
--num_epochs N``), and one whose saved options differ is refused with both values named.

    esapr.compare(["train_vae", "train_sas"], seeds=[0, 1, 2], dataset_code="ml-100k")

Modules: ``plan`` (the runs and what each does with its folder), ``pool`` (training them),
``stats`` (intervals and paired tests), ``report`` (the table and its files), ``figure``.
"""
from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any, Sequence

from esapr.comparison.figure import plot_comparison
from esapr.comparison.plan import DEFAULT_SEEDS, Run, RunPlan, cli_values, plan_run, plan_runs
from esapr.comparison.pool import RunOutcome, read_outcome, run_all
from esapr.comparison.report import Comparison, aggregate, model_labels, protocol_label, write_comparison
from esapr.comparison.stats import (N_BOOTSTRAP, bootstrap_interval, bootstrap_intervals, compare_models, holm,
                                    paired_p_value)
from esapr.errors import UserError
from esapr.options.groups import RunOptions
from esapr.options.spec import coerce

__all__ = ["compare", "Comparison", "RunOutcome", "Run", "RunPlan", "plan_run", "plan_runs", "run_all", "aggregate",
           "write_comparison", "plot_comparison", "protocol_label", "compare_models", "bootstrap_interval",
           "bootstrap_intervals", "paired_p_value", "holm", "DEFAULT_SEEDS"]


def compare(templates: Sequence[str] | str, seeds: Sequence[int] = DEFAULT_SEEDS, jobs: int = 1,
            dry_run: bool = False, aggregate_only: bool = False, output: str | Path | None = None,
            metrics: Sequence[str] | None = None, progress: Any = "auto", say=print,
            **overrides) -> Comparison | list[str]:
    """Train every (template, seed) (reusing, resuming or extending what is there; refusing a
    folder whose saved options differ), then aggregate into ``<root>/<group>/comparison``.csv,
    .json, .md and .png (``output``: another prefix). Each option applies to the templates whose
    family reads it. The metrics are those of the templates' ``metric_ks`` together (or the
    ``metric_ks`` given). ``dry_run``: return (and print) each run's ``esapr train`` command
    instead; ``aggregate_only``: train nothing. ``overwrite=True`` trains every run again."""
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
    overwrite = coerce(RunOptions, "overwrite", overrides.get("overwrite", False))
    runs = plan_runs(templates, seeds, overrides)
    plans = [plan_run(run.config, overwrite) for run in runs]
    first = runs[0].config
    given = _given(runs, overrides)
    prefix = Path(output) if output else Path(first.run.experiment_root) / first.run.experiment_group / "comparison"
    if dry_run:
        return _dry_run(runs, plans, templates, seeds, given, say)
    if aggregate_only:
        outcomes = [read_outcome(run, plan=plan) for run, plan in zip(runs, plans)]
    else:
        start = time.perf_counter()
        outcomes = run_all(runs, plans, jobs, progress, prefix.parent / "compare_logs", say)
        trained = sum(o.action != "reused" for o in outcomes)
        say(f"{len(outcomes) - trained} run(s) reused, {trained} trained in {time.perf_counter() - start:.0f} s")
    settings = {"templates": templates, "seeds": seeds, "options": given, "n_bootstrap": N_BOOTSTRAP,
                "test": "two-sided Wilcoxon signed-rank on per-user values averaged over seeds, Holm-corrected "
                        "across models", "pilot": first.run.pilot}
    protocols = {"full": protocol_label("full"),
                 "sampled": protocol_label("sampled", first.data.test_negative_sampler_code,
                                           first.data.test_negative_sample_size)}
    if not first.evaluation.full_ranking:
        protocols.pop("full")
    metric_ks = sorted({k for run in runs for k in run.config.evaluation.metric_ks})
    comparison = aggregate(outcomes, model_labels(runs), metric_ks, protocols, settings)
    write_comparison(comparison, prefix, metrics)
    return comparison


def _given(runs: list[Run], overrides: dict[str, Any]) -> dict[str, Any]:
    """The options the comparison was given, as the runs that read them took them."""
    given: dict[str, Any] = {}
    for run in runs:
        for name, value in run.options.items():
            if name in overrides:
                given.setdefault(name, value)
    return given


def _dry_run(runs: list[Run], plans: list[RunPlan], templates: list[str], seeds: list[int],
             given: dict[str, Any], say) -> list[str]:
    """Each run's ``esapr train`` command (a finished one: a comment that it is reused), then the
    ``esapr compare --aggregate_only`` that reads them afterwards."""
    lines = [f"# {run.path}: {plan.reason}, reused" if plan.action == "reuse" else shlex.join(run.command(plan))
             for run, plan in zip(runs, plans)]
    again = ["esapr", "compare", "--templates", *templates, "--seeds", *map(str, seeds)]
    for name, value in given.items():
        again += [f"--{name}", *cli_values(value)]
    lines.append("# afterwards: " + shlex.join(again + ["--aggregate_only"]))
    for line in lines:
        say(line)
    return lines
