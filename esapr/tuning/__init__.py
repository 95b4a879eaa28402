"""``esapr tune``: every template searched by Optuna with the same budget, on validation only.

One study per (template, dataset), in ``<root>/<group>/tune/<template>/``: trial ``k`` is the
ordinary experiment folder ``trial_<k>`` (locks, resume, fingerprints, ``evaluate`` and
``recommend`` work on it) trained by the normal trainer, scored on validation (``best_metric``;
the test split is never scored during a search), each epoch reported to the pruner. The space is
the family's ``SPACE`` (``esapr/families/``), changed by ``--space FILE``, less the options given,
which are fixed. The budget, ``trials`` (complete + pruned), ``hours`` of training or both
(whichever comes first), is per template and the same for every template of one call, so a call
over several templates is a fair search by construction. A new study's first trial is the
template's own values (those the space can draw), so a search starts from the papers' settings.
Sampling is TPE by default, each trial's sampler seeded with (seed, trial number).

The pruner is Optuna's ``MedianPruner`` (5 startup trials; no pruning during the first
``saturation_wait_epochs`` epochs, the template's patience): a trial whose best validation so far
is below the median of the complete trials at the same epoch is stopped there. It suits
per-epoch validation with early stopping: it compares trials epoch by epoch without knowing how
long any trial will run (early stopping ends each at its own epoch, so the maximum budget that
Hyperband or successive halving need does not exist), it decides for each trial alone, so
workers on other machines need no rung bookkeeping, and the warm-up of one patience gives every
trial the epochs early stopping would give a plateau (curves of different learning rates cross
early). A pruned trial ends as an early stop does: its best weights saved, its folder finished.

Storage, resumption and workers: see ``esapr.tuning.study``. Re-running the same command
continues the study (a raised budget extends it; its other settings cannot change); ``--jobs N``
runs N worker processes, and N machines running the same command on one ``--storage`` share the
work. The result is ``tune/<template>/best.yaml`` and the study report (``esapr.tuning.report``);
``esapr compare --tuned`` compares the best settings over seeds.

    esapr.tune(["train_ease", "train_vae"], trials=20, dataset_code="ml-100k")
"""
from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path, PurePath
from typing import Any, Sequence

from esapr.comparison.plan import PYTHON, Names, tune_folder, whole
from esapr.comparison.pool import last_error, stop_with_parent_fn, thread_env
from esapr.config import ALL_OPTIONS, RESUME_DATA, build_config, owners, readers
from esapr.errors import UserError
from esapr.options.spec import short
from esapr.tuning.report import StudyReport, write_report
from esapr.tuning.space import model_code, search_spaces, start_values, to_json
from esapr.progress import seconds
from esapr.tuning.study import Budget, Search, budget_left, open_study, quiet_optuna, safe_url, spent
from esapr.tuning.worker import work

__all__ = ["tune", "run_tune", "StudyReport", "Budget", "Search"]
SAMPLERS = ("tpe", "random")
SET_BY_TUNE = ("experiment_name", "resume", "overwrite")     # each trial's folder and what it does with it
POLL_SECONDS = 2.0


def tune(templates: Sequence[str] | str, trials: int | None = None, hours: float | None = None, jobs: int = 1,
         storage: str | None = None, space: str | Path | None = None, sampler: str = "tpe", seed: int = 0,
         pruner=None, progress: Any = "auto", say=print, **overrides) -> dict[str, StudyReport]:
    """Search each template's space with ``trials`` counted trials (complete or pruned) or
    ``hours`` of training each, on validation; options given are fixed. ``jobs``: worker
    processes; ``storage``: a database URL (postgresql://, sqlite:///) or a journal file (default
    ``<root>/<group>/tune/<template>/study.log``); ``space``: a YAML file changing the families'
    spaces; ``sampler``: tpe or random, seeded by ``seed``; ``pruner``: an Optuna pruner (default
    ``MedianPruner`` with a warm-up of the template's patience). Returns each template's
    ``StudyReport`` (counts, time, best trial, files); writes ``best.yaml`` beside its study."""
    return run_tune(PYTHON, templates, trials, hours, jobs, storage, space, sampler, seed, pruner, progress, say,
                    **overrides)


def run_tune(names: Names, templates: Sequence[str] | str, trials: Any = None, hours: Any = None, jobs: Any = 1,
             storage: str | None = None, space: str | Path | None = None, sampler: str = "tpe", seed: Any = 0,
             pruner=None, progress: Any = "auto", say=print, **overrides) -> dict[str, StudyReport]:
    """``tune``, its messages naming the arguments as ``names`` says. Everything is checked (and
    each study opened, its settings compared) before any trial trains."""
    templates = [templates] if isinstance(templates, (str, os.PathLike)) else list(templates or [])
    if not templates:
        raise UserError(f"tune needs templates: {names.set('templates', ['train_ease', 'train_vae'])}")
    templates = [os.fspath(t) for t in templates]
    if len(set(templates)) != len(templates):
        raise UserError(f"a template is named twice in {names.set('templates', templates)}")
    budget = _budget(trials, hours, names)
    jobs = _whole(jobs, "jobs", 1, names)
    seed = _whole(seed, "seed", 0, names)
    if sampler not in SAMPLERS:
        raise UserError(f"{names.arg('sampler')} is {short(sampler)}; choose {' or '.join(SAMPLERS)}")
    for name in SET_BY_TUNE:
        if name in overrides:
            raise UserError(f"tune sets {name} itself (each trial has its folder, resumed or reused as needed); drop "
                            f"{names.arg(name)}")
    unread = [n for n in overrides if n in ALL_OPTIONS and not any(n in owners(model_code(t, overrides))
                                                                   for t in templates)]
    if unread:
        raise UserError(f"option '{unread[0]}' is read by none of the templates {', '.join(templates)} (read by "
                        f"{', '.join(readers(unread[0]))}): drop it, or add a template that reads it")
    quiet_optuna()
    spaces = search_spaces(templates, overrides, space)
    searches = [_search(t, overrides, spaces[t], budget, storage, sampler, seed) for t in templates]
    pruners = {s.template: pruner or _default_pruner(s) for s in searches}
    # a study whose settings differ is refused before anything trains
    studies = {search.template: open_study(search, pruners[search.template]) for search in searches}
    reports = {}
    for search in searches:
        where = safe_url(search.storage) if search.storage else Path(search.folder) / "study.log"
        say(f"{search.template}: study {search.study_name} ({where}), budget {budget.describe()}, searching "
            f"{', '.join(search.space)}")
        counted, trained = spent(studies[search.template])
        if counted:
            done = "" if budget_left(studies[search.template], budget) else \
                "; its budget is spent, nothing to train (raise the budget to search further)"
            say(f"{search.template}: continuing the study: {counted} counted trial(s) so far, {seconds(trained)} of "
                f"training{done}")
        if jobs == 1:
            work(search, pruners[search.template], progress, say)
        else:
            _run_workers(search, pruners[search.template], jobs, say)
        report = write_report(search, open_study(search, pruners[search.template]))
        for note in report.notes:
            say(f"{search.template}: {note}")
        say(report.describe())
        if "best" in report.files:
            say(f"{search.template}: best settings {report.files['best']} (esapr train --templates "
                f"{report.files['best']}, or esapr compare --tuned)")
        reports[search.template] = report
    return reports


def _budget(trials: Any, hours: Any, names: Names) -> Budget:
    if trials is None and hours is None:
        raise UserError(f"tune needs a budget per template: {names.set('trials', 20)} (complete or pruned trials), "
                        f"{names.set('hours', 2)} (of training) or both (whichever comes first)")
    return Budget(trials=None if trials is None else _whole(trials, "trials", 1, names),
                  hours=None if hours is None else _hours(hours, names))


def _hours(hours: Any, names: Names) -> float:
    try:
        value = float(hours)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(hours, bool) or not math.isfinite(value) or value <= 0:
        raise UserError(f"{names.arg('hours')} expects a number of hours above 0, got {short(hours)}")
    return value


def _whole(value: Any, name: str, least: int, names: Names) -> int:
    number = whole(value) if isinstance(value, (int, float, str)) else None
    if number is None or number < least:
        raise UserError(f"{names.arg(name)} expects a whole number >= {least}, got {short(value)}")
    return number


def _search(template: str, overrides: dict[str, Any], space: dict, budget: Budget, storage: str | None,
            sampler: str, seed: int) -> Search:
    """One template's search: the options its family reads, its folder, its study's settings (with
    the fingerprint of the data, prepared here once)."""
    from esapr.data.prepare import prepare_data
    code = model_code(template, overrides)
    given = {name: value for name, value in overrides.items() if name in owners(code) or name not in ALL_OPTIONS}
    config = build_config([template], given)
    identity = config.identity()
    fixed = {name: identity[name] for name in given if name in identity and name not in RESUME_DATA}
    settings = {"template": template, "model_code": code, "dataset": config.data.data_file and
                PurePath(config.data.data_file).name or config.data.dataset_code,
                "data_fingerprint": prepare_data(config).fingerprint, "metric": config.evaluation.best_metric,
                "space": to_json(space), "fixed": fixed, "sampler": sampler, "seed": seed, "budget": asdict(budget)}
    folder = tune_folder(config, template)
    warmup = config.training.saturation_wait_epochs if config.training is not None else 0
    return Search(template, code, given, to_json(space), budget, str(folder), storage,
                  f"{PurePath(template).stem}@{config.run.experiment_group}", config.evaluation.best_metric,
                  sampler, seed, warmup, settings, start_values(space, config.values()))


def _default_pruner(search: Search):
    import optuna
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=search.warmup)


def _run_workers(search: Search, pruner, jobs: int, say) -> None:
    """``jobs`` worker processes (``python -m esapr.tuning``) on the study, each with cores // jobs
    threads and its output in ``tune/<template>/logs/``; trials are said as they end. A worker
    stops (its trial queued again) when this process dies; an interrupted call stops them."""
    import optuna
    folder = Path(search.folder) / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **thread_env(jobs), "PYTHONWARNINGS": "ignore"}
    payload = pickle.dumps((search, pruner))
    workers = []
    try:
        for j in range(jobs):
            log = folder / f"worker{j}.{os.getpid()}.log"
            handle = open(log, "w")
            process = subprocess.Popen([sys.executable, "-m", "esapr.tuning"], stdin=subprocess.PIPE, stdout=handle,
                                       stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                       preexec_fn=stop_with_parent_fn())
            process.stdin.write(payload)
            process.stdin.close()
            workers.append((process, log, handle))
        say(f"{search.template}: {jobs} workers started (logs in {folder})")
        study, told = open_study(search, pruner), set()
        while any(process.poll() is None for process, _, _ in workers):
            time.sleep(POLL_SECONDS)
            for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                                  optuna.trial.TrialState.PRUNED)):
                if trial.number not in told:
                    told.add(trial.number)
                    value = "" if trial.value is None else f" ({search.metric} {trial.value:.4f})"
                    say(f"trial {trial.number} {trial.state.name.lower()}{value}")
    finally:
        for process, _, handle in workers:      # interrupted: each worker fails its trial and queues it again
            if process.poll() is None:
                process.terminate()
            process.wait()
            handle.close()
    errors = [last_error(log, process.returncode) for process, log, _ in workers if process.returncode != 0]
    if errors:
        raise UserError(f"{search.template}: {len(errors)} of {jobs} workers failed ({errors[0]}); see {folder}")
