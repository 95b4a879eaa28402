"""A worker: trial after trial of one study until its budget is spent. Each trial is an ordinary
experiment folder ``<folder>/trial_<k>`` trained by the normal trainer on the training split,
scored on validation only (``best_metric``; the test split is never scored), each epoch's value
reported to Optuna's pruner. Workers in this process, in ``--jobs`` processes or on other
machines run the same loop on one storage; trial numbers keep their work apart.
"""
from __future__ import annotations

import math
import pickle
import signal
import sys
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from esapr.comparison.plan import plan_run
from esapr.config import build_config
from esapr.errors import UserError, first_line
from esapr.experiment import Experiment
from esapr.families import family
from esapr.tuning.space import as_options, from_json, suggest
from esapr.tuning.study import (Search, budget_left, claim, fail_and_retry, folder_of, heartbeat, open_study,
                                quiet_optuna, recover, sampler_for, surplus)

MAX_FAILURES = 3        # trials in a row that fail (not by a dead worker) before a worker stops


def trial_config(search: Search, params: dict[str, Any], folder: str):
    """The run of a trial: the template, the options given, the drawn values, in the trial's folder."""
    path = Path(search.folder)
    options = {**search.options, **as_options(search.code, params), "experiment_root": str(path.parent),
               "experiment_group": path.name, "experiment_name": folder}
    return build_config([search.template], options)


def _tell(study: optuna.Study, trial: optuna.Trial, **outcome) -> None:
    """Tell a trial's end; one that another worker failed meanwhile (it thought this worker dead) stays failed."""
    try:
        study.tell(trial, **outcome)
    except (UpdateFinishedTrialError, ValueError, RuntimeError):
        pass


def run_trial(study: optuna.Study, trial: optuna.Trial, search: Search, progress: Any, say) -> str:
    """Train one trial (or resume the folder of the trial it retries) and tell Optuna how it
    ended: complete (its best validation value), pruned, or failed. Returns the state's name."""
    params = suggest(trial, from_json(search.space))
    folder = folder_of(study.get_trials(deepcopy=False)[trial.number])
    trial.set_user_attr("folder", folder)
    shown = ", ".join(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
                      for name, value in params.items())
    reported: set[int] = set()

    def report(epoch: int, value: float) -> None:
        if epoch not in reported:
            trial.report(value, epoch)
            reported.add(epoch)

    trained = family(search.code).trained   # a closed-form trial is whole at its one step: never pruned

    def on_validation(epoch: int, metrics: dict) -> str | None:
        report(epoch, metrics[search.metric])
        return f"pruned by the search at epoch {epoch}" if trained and trial.should_prune() else None

    try:
        plan = plan_run(trial_config(search, params, folder), hint="delete the trial's folder to train it again")
        experiment = Experiment(plan.path)
        if plan.action == "reuse":      # a retry of a trial whose worker died after training it
            results = experiment.read_results()
        else:
            from esapr.training.trainer import train
            for row in experiment.read_table("val_log") if plan.action == "resume" else []:
                report(int(float(row["epoch"])), float(row[search.metric]))
            say(f"trial {trial.number} ({folder}{', ' + plan.reason if plan.action != 'start' else ''}): {shown}")
            with heartbeat(trial):
                results = train(plan.config, progress=progress, on_validation=on_validation, test=False)
        value = float(results["best_val"])
        if not math.isfinite(value):
            raise UserError(f"no finite validation {search.metric} ({value})")
    except Exception as error:  # this trial's failure (a value the model refuses, out of memory, ...)
        note = first_line(error)
        trial.set_user_attr("error", note)
        _tell(study, trial, state=TrialState.FAIL)
        say(f"trial {trial.number} ({folder}) failed: {note}")
        return "failed"
    # An ended trial is never resumed, and hundreds of checkpoints would fill a disk; its best weights stay.
    experiment.recent_checkpoint.unlink(missing_ok=True)
    trial.set_user_attr("train_seconds", float(results["train_seconds"]))
    trial.set_user_attr("epochs", int(results["epochs"]))
    if results.get("stop_reason"):
        _tell(study, trial, state=TrialState.PRUNED)
        say(f"trial {trial.number} pruned at epoch {results['epochs']} (best {search.metric} {value:.4f})")
        return "pruned"
    _tell(study, trial, values=value)
    epochs = f" (epoch {results['best_epoch']} of {results['epochs']})" if family(search.code).trained else ""
    say(f"trial {trial.number} complete: {search.metric} {value:.4f}{epochs}")
    return "complete"


def work(search: Search, pruner: optuna.pruners.BasePruner, progress: Any = "auto", say=print) -> None:
    """Run trials of ``search``'s study until its budget is spent (by this worker or others)."""
    quiet_optuna()
    study = open_study(search, pruner)
    failures = 0
    while True:
        recover(study, search, say)
        if not budget_left(study, search.budget):
            return
        trial = study.ask()
        try:
            claim(trial)
            if surplus(study, trial, search.budget):     # other workers took the last trials meanwhile
                trial.set_user_attr("unused", True)
                _tell(study, trial, state=TrialState.FAIL)
                return
            study.sampler = sampler_for(search, trial.number)
            outcome = run_trial(study, trial, search, progress, say)
        except KeyboardInterrupt:       # Ctrl-C or SIGTERM: failed, and queued again if it has a folder to resume
            fail_and_retry(study, study.get_trials(deepcopy=False)[trial.number], say, Path(search.folder))
            raise
        failures = failures + 1 if outcome == "failed" else 0
        if failures >= MAX_FAILURES:
            error = study.get_trials(deepcopy=False)[trial.number].user_attrs.get("error", "")
            raise UserError(f"{search.template}: {failures} trials in a row failed (the last: {error}); see "
                            f"{Path(search.folder) / 'trials.csv'}")


def _terminate(signum, frame) -> None:
    """SIGTERM (the parent stopped, or died) ends the trial as Ctrl-C does: failed and queued again."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt("terminated")


def main() -> int:
    """A worker process of ``esapr tune --jobs N``: (search, pruner) pickled on standard input."""
    search, pruner = pickle.load(sys.stdin.buffer)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        work(search, pruner, progress="quiet", say=lambda line: print(line, flush=True))
    except UserError as error:
        print(f"esapr: error: {error}", flush=True)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
