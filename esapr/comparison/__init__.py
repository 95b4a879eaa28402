"""``esapr compare``: train templates x seeds, then aggregate what a researcher can trust.

One run of one seed cannot tell models apart on a small dataset, so a comparison trains every
(template, seed) into its own experiment folder (``<template>_seed<N>``) and reports per model and
metric the mean and standard deviation over seeds, a 95 % bootstrap interval over test users and
seeds, and a paired test of every model against the best one on the per-user test values
(Wilcoxon signed-rank, Holm-corrected across models).

Folders are reused and never silently replaced: a finished run that reads the same options and
was trained on the same data (its data fingerprint) is reused whatever metrics are asked (they
are computed from its saved ranks), an unfinished one resumed, a finished one whose epoch limit
was raised is extended (as ``esapr train --resume --num_epochs N``), and one whose saved options
or data differ is refused with both values named. A run another process is training is waited
for; a run whose files are damaged is left out as damaged. The table's files are
``comparison_<hash of the templates>`` in the group folder, so other template sets keep theirs.

    esapr.compare(["train_vae", "train_sas"], seeds=[0, 1, 2], dataset_code="ml-100k")

Modules: ``plan`` (the runs and what each does with its folder), ``pool`` (training them),
``stats`` (intervals and paired tests), ``report`` (the table and its files), ``figure``,
``pareto`` (accuracy against training time: ``esapr compare --pareto``).
"""
from __future__ import annotations

import re
import shlex
import time
from pathlib import Path
from typing import Any, Sequence

from esapr.comparison.figure import plot_comparison
from esapr.comparison.plan import (CLI, DEFAULT_SEEDS, PYTHON, Names, Planner, Run, RunPlan, cli_values, plan_run,
                                   plan_runs, tuned_templates, whole)
from esapr.comparison.pool import RunOutcome, read_outcome, run_all
from esapr.comparison.report import (Comparison, aggregate, check_metrics, model_labels, output_files, output_prefix,
                                     protocol_label, set_name, write_comparison)
from esapr.comparison.stats import (N_BOOTSTRAP, bootstrap_interval, bootstrap_intervals, compare_models, holm,
                                    paired_p_value)
from esapr.config import python_words
from esapr.errors import UserError
from esapr.options.groups import RunOptions
from esapr.options.spec import coerce, short

__all__ = ["compare", "run_compare", "Comparison", "RunOutcome", "Run", "RunPlan", "plan_run", "plan_runs", "run_all",
           "aggregate", "write_comparison", "plot_comparison", "protocol_label", "compare_models",
           "bootstrap_interval", "bootstrap_intervals", "paired_p_value", "holm", "DEFAULT_SEEDS", "CLI", "PYTHON"]


def compare(templates: Sequence[str] | str, seeds: Sequence[int] = DEFAULT_SEEDS, jobs: int = 1,
            dry_run: bool = False, aggregate_only: bool = False, output: str | Path | None = None,
            metrics: Sequence[str] | str | None = None, progress: Any = "auto", say=print, tuned: bool = False,
            **overrides) -> Comparison | list[str]:
    """Train every (template, seed) (reusing, resuming or extending what is there; refusing a
    folder whose saved options or data differ), then aggregate into
    ``<root>/<group>/comparison_<hash of the templates>``.csv, .json, .md and .png (``output``:
    another prefix, or a folder to hold them). Each option applies to the templates whose family
    reads it. The metrics are those of the templates' ``metric_ks`` together (or the
    ``metric_ks`` given); ``metrics``: those the printed table and figure show. ``dry_run``:
    return (and print) each run's ``esapr train`` command instead; ``aggregate_only``: train
    nothing. ``overwrite=True`` trains every run again. ``tuned``: each template's best settings
    from ``esapr tune`` (``<root>/<group>/tune/<template>/best.yaml``) where a study left them.
    Bad arguments are one-line UserErrors naming the keyword arguments."""
    try:
        return run_compare(PYTHON, templates, seeds, jobs, dry_run, aggregate_only, output, metrics, progress, say,
                           tuned, **overrides)
    except UserError as error:      # a run's own advice too in this call's words (overwrite=True)
        raise UserError(python_words(str(error))) from None


def run_compare(names: Names, templates: Sequence[str] | str, seeds: Sequence[int] = DEFAULT_SEEDS, jobs: int = 1,
                dry_run: bool = False, aggregate_only: bool = False, output: str | Path | None = None,
                metrics: Sequence[str] | str | None = None, progress: Any = "auto", say=print, tuned: bool = False,
                **overrides) -> Comparison | list[str]:
    """``compare``, its messages naming the arguments as ``names`` says (``CLI``: flags, for
    ``esapr compare``). Everything that can be refused is refused before anything is trained."""
    jobs = _jobs(jobs, names)
    if tuned:
        templates = tuned_templates(templates, overrides, names, say)
    if dry_run and aggregate_only:
        raise UserError(f"{names.set('dry_run')} and {names.set('aggregate_only')} exclude each other")
    overwrite = coerce(RunOptions, "overwrite", overrides.get("overwrite", False))
    runs = plan_runs(templates, seeds, overrides, names)
    seeds = list(dict.fromkeys(run.seed for run in runs))
    metric_ks = sorted({k for run in runs for k in run.config.evaluation.metric_ks})
    metrics = check_metrics(metrics, metric_ks, names)
    entries = _entries(runs, seeds)
    prefix = output_prefix(output, runs, entries, names)
    planner = Planner(overwrite, names)
    plans = [planner(run) for run in runs]
    given = _given(runs, overrides)
    if dry_run:
        return _dry_run(runs, plans, entries, seeds, given, say)
    named = " (named by the template set)" if prefix.name == set_name(entries) else ""
    say(f"comparison files: {prefix}.{{{','.join(output_files(prefix))}}}{named}")
    if aggregate_only:
        outcomes = [read_outcome(run, plan=plan) for run, plan in zip(runs, plans)]
    else:
        start = time.perf_counter()
        outcomes = run_all(runs, plans, jobs, progress, say, replan=lambda run: planner(run, overwrite=False))
        trained = sum(o.action not in ("reused", "none") for o in outcomes)
        say(f"{sum(o.action == 'reused' for o in outcomes)} run(s) reused, {trained} trained in "
            f"{time.perf_counter() - start:.0f} s")
    first = runs[0].config
    settings = {"templates": entries, "seeds": seeds, "options": given, "n_bootstrap": N_BOOTSTRAP,
                "test": "two-sided Wilcoxon signed-rank on per-user values averaged over seeds, Holm-corrected "
                        "across models", "pilot": first.run.pilot}
    protocols = {"full": protocol_label("full"),
                 "sampled": protocol_label("sampled", first.data.test_negative_sampler_code,
                                           first.data.test_negative_sample_size)}
    if not first.evaluation.full_ranking:
        protocols.pop("full")
    comparison = aggregate(outcomes, model_labels(runs), metric_ks, protocols, settings)
    write_comparison(comparison, prefix, metrics)
    return comparison


def _entries(runs: list[Run], seeds: list[int]) -> list[str]:
    """The templates as given (``train_meantime:1`` where a template runs fewer of the seeds)."""
    counts = {run.template: sum(r.template == run.template for r in runs) for run in runs}
    return [t if n == len(seeds) else f"{t}:{n}" for t, n in counts.items()]


def _jobs(jobs: Any, names: Names) -> int:
    """A whole number >= 1, exactly (2.9 is refused, not truncated)."""
    value = whole(jobs) if isinstance(jobs, (int, float, str)) else None
    if value is None:
        raise UserError(f"{names.arg('jobs')} expects a whole number, got {short(jobs)}")
    if value < 1:
        raise UserError(f"{names.arg('jobs')} must be at least 1, got {value}")
    return value


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
    ``esapr compare --aggregate_only`` that reads them afterwards. Every word is shell-quoted and
    no comment holds a line break, so the output can be piped to a shell as it is."""
    lines = []
    for run, plan in zip(runs, plans):
        if plan.action in ("reuse", "damaged"):
            lines.append(_comment(f"{shlex.quote(str(run.path))}: {plan.reason}, "
                                  f"{'reused' if plan.action == 'reuse' else 'left out'}"))
        else:
            lines.append(shlex.join(run.command(plan)))
    again = ["esapr", "compare", "--templates", *templates, "--seeds", *map(str, seeds)]
    for name, value in given.items():
        again += [f"--{name}", *cli_values(value)]
    lines.append(_comment("afterwards: " + shlex.join(again + ["--aggregate_only"])))
    for line in lines:
        say(line)
    return lines


def _comment(text: str) -> str:
    """A shell comment of one line: a control character (a line break in a path would end the
    comment and run the rest) is written as its escape."""
    return "# " + re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", text)
