"""Carrying out a comparison's plans: one run after another in this process, or ``jobs``
``esapr train`` subprocesses at once (each with a share of the cores and its own log); what each
run's folder shows afterwards. A failed run is recorded and the others go on."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esapr.comparison.plan import Run, RunPlan
from esapr.errors import UserError, first_line
from esapr.experiment import Experiment

DONE = {"start": "trained", "resume": "resumed", "extend": "extended", "overwrite": "overwritten", "reuse": "reused"}


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


def read_outcome(run: Run, action: str = "none", seconds: float = 0.0, note: str = "",
                 plan: RunPlan | None = None) -> RunOutcome:
    """The run's state as its folder shows it (``plan``: an aggregation without training, where
    a run still to extend is not the run asked for)."""
    experiment = Experiment(run.path)
    status = experiment.status()
    result = RunOutcome(run.template, run.seed, run.path, "missing", action, seconds, note=note)
    if status is None:
        result.state = "failed" if note else "missing"
        result.note = note or "not trained yet"
        return result
    if status != "finished":
        result.state = "failed" if note else status
        return result
    if plan is not None and plan.action == "extend":
        result.state, result.note = "needs more epochs", plan.reason
        return result
    result.results = experiment.read_results() or {}
    saved = experiment.read_config()
    pilot = saved.get("pilot") and not run.config.run.pilot       # a pilot compare shows pilots
    result.state = "pilot" if pilot else "finished"
    limit = run.config.num_epochs
    result.capped = limit > 0 and int(result.results.get("epochs", 0)) >= limit
    return result


def train_planned(plan: RunPlan, progress: Any = "auto") -> dict:
    """Carry out a plan in this process; the results (reused: read from the folder)."""
    if plan.action == "reuse":
        return Experiment(plan.path).read_results() or {}
    from esapr.training.trainer import train
    return train(plan.config, progress=progress)


def _threads_per_job(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // jobs)


def run_all(runs: list[Run], plans: list[RunPlan], jobs: int = 1, progress: Any = "auto",
            log_folder: Path | None = None, say=print) -> list[RunOutcome]:
    """Train what the plans ask: in this process one after another (jobs 1), or as ``jobs``
    ``esapr train`` subprocesses at once, each with cores // jobs threads and its output in
    ``log_folder/<group>-<run>.log``. A failed run is recorded and the others go on."""
    outcomes: dict[int, RunOutcome] = {}
    todo = []
    for i, (run, plan) in enumerate(zip(runs, plans)):
        if plan.action == "reuse":
            outcomes[i] = read_outcome(run, "reused")
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
            outcomes[i] = read_outcome(run, DONE[plan.action], time.perf_counter() - start, note)
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
                outcomes[i] = read_outcome(run, DONE[plan.action], time.perf_counter() - start, note)
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
