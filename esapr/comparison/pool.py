"""Carrying out a comparison's plans: one run after another in this process, or ``jobs``
``esapr train`` subprocesses at once (each with a share of the cores and its own log); what each
run's folder shows afterwards. A failed run is recorded and the others go on.

A run that another process is training (its folder's lock is held) is waited for, then planned
again (usually: reused), so two compares of the same runs share the work instead of failing each
other's runs. On Linux each ``esapr train`` child stops (as interrupted, resumable) when the
compare that started it dies, even by SIGKILL.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from esapr.comparison.plan import DamagedRun, Run, RunPlan, count, finished_results, plan_run
from esapr.errors import UserError, first_line
from esapr.experiment import Experiment
from esapr.files import lock_holder, refuse_links

DONE = {"start": "trained", "resume": "resumed", "extend": "extended", "overwrite": "overwritten", "reuse": "reused"}
BUSY = "is in use by another esapr process"      # FolderLock's refusal: another process took the run first
POLL_SECONDS = 1.0                                # how often a run held by another process is looked at
PR_SET_PDEATHSIG = 1                              # linux/prctl.h


@dataclass
class RunOutcome:
    """What one run is after this call. ``state``: finished | failed | damaged | pilot | running |
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
    closed_form: bool = False     # fitted in closed form: every seed gives the same run

    @property
    def included(self) -> bool:
        return self.state == "finished"

    @property
    def problem(self) -> bool:
        """A run this call could not train or read (the command's exit status says so)."""
        return self.state in ("failed", "damaged")

    def describe(self) -> str:
        return f"{self.path.name} ({self.state}{': ' + self.note if self.note else ''})"


def read_outcome(run: Run, action: str = "none", seconds: float = 0.0, note: str = "",
                 plan: RunPlan | None = None) -> RunOutcome:
    """The run's state as its folder shows it (``plan``: an aggregation without training, where
    a run still to extend is not the run asked for). A run whose status says "running" but whose
    lock no process holds was interrupted by its process's death."""
    experiment = Experiment(run.path)
    status = experiment.status()
    result = RunOutcome(run.template, run.seed, run.path, "missing", action, seconds, note=note,
                        closed_form=run.config.training is None)
    if plan is not None and plan.action == "damaged":
        result.state, result.note = "damaged", plan.reason
        return result
    if status is None:
        result.state = "failed" if note else "missing"
        result.note = note or "not trained yet"
        return result
    if status != "finished":
        result.state = "failed" if note else status
        if status == "running" and not note:
            holder = lock_holder(run.path)
            result.state, result.note = ("running", f"by {holder}") if holder else ("interrupted", "its process died")
        return result
    if plan is not None and plan.action == "extend":
        result.state, result.note = "needs more epochs", plan.reason
        return result
    try:
        result.results = finished_results(experiment)
    except DamagedRun as error:
        result.state, result.note = "damaged", str(error)
        return result
    saved = experiment.read_config()
    pilot = saved.get("pilot") and not run.config.run.pilot       # a pilot compare shows pilots
    result.state = "pilot" if pilot else "finished"
    limit = run.config.num_epochs
    result.capped = limit > 0 and count(result.results["epochs"]) >= limit
    return result


def _cores() -> int:
    """The cores this process may run on (its affinity: a container's or taskset's share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _threads_per_job(jobs: int) -> int:
    """A fair share of the cores for each of ``jobs`` runs at once (at least 1): more threads than
    cores make runs slow each other down (two runs of 2 threads on 2 cores: 55 s an epoch each,
    against 31 s alone)."""
    return max(1, _cores() // jobs)


def thread_env(jobs: int) -> dict[str, str]:
    """The environment that holds a child's torch (OpenMP, MKL) and numpy (OpenBLAS) to its share."""
    threads = str(_threads_per_job(jobs))
    return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}


class _Waits:
    """Runs whose folder another process holds: said once each, looked at every POLL_SECONDS."""

    def __init__(self, say):
        self.say, self._told, self._looked = say, set(), {}

    def held(self, i: int, run: Run) -> bool:
        """Whether another process holds the run's folder now (said the first time)."""
        self._looked[i] = time.monotonic()
        holder = lock_holder(run.path)
        if holder and i not in self._told:
            self._told.add(i)
            self.say(f"[waiting] {run.template} seed {run.seed}: {run.path} is being trained by another esapr "
                     f"process ({holder}); waiting for it, then using what it leaves")
        return holder is not None

    def due(self, i: int) -> bool:
        return time.monotonic() - self._looked.get(i, 0.0) >= POLL_SECONDS


def run_all(runs: list[Run], plans: list[RunPlan], jobs: int = 1, progress: Any = "auto", say=print,
            replan: Callable[[Run], RunPlan] | None = None) -> list[RunOutcome]:
    """Train what the plans ask: in this process one after another (jobs 1), or as ``jobs``
    ``esapr train`` subprocesses at once, each with cores // jobs threads and its output in
    ``<group>/compare_logs/<run>.<pid>.log`` (this process's own file). A run another process
    is training is waited for and then planned again by ``replan`` (default: ``plan_run``). A
    failed run is recorded and the others go on."""
    replan = replan or (lambda run: plan_run(run.config))
    plans = list(plans)
    outcomes: dict[int, RunOutcome] = {}
    todo = []
    for i, (run, plan) in enumerate(zip(runs, plans)):
        if plan.action in ("reuse", "damaged"):
            outcomes[i] = read_outcome(run, "reused" if plan.action == "reuse" else "none", plan=plan)
        else:
            todo.append(i)
    waits = _Waits(say)
    if jobs <= 1:
        for n, i in enumerate(todo, 1):
            outcomes[i] = _run_here(runs[i], plans[i], f"[{n}/{len(todo)}]", progress, say, replan, waits, i)
        return [outcomes[i] for i in range(len(runs))]
    return _run_children(runs, plans, todo, outcomes, jobs, say, replan, waits)


def _run_here(run: Run, plan: RunPlan, label: str, progress: Any, say, replan, waits: _Waits, i: int) -> RunOutcome:
    """One run in this process: waited for while another process holds it, then trained."""
    again = False           # another process took the run between our look and our start
    while True:
        if waits.held(i, run) or again:
            while waits.held(i, run):
                time.sleep(POLL_SECONDS)
            plan = replan(run)
        if plan.action in ("reuse", "damaged"):
            return read_outcome(run, "reused" if plan.action == "reuse" else "none", plan=plan)
        say(f"{label} {run.template} seed {run.seed}: {plan.reason} -> {run.path}")
        start = time.perf_counter()
        note = ""
        try:
            from esapr.training.trainer import train
            train(plan.config, progress=progress)
        except KeyboardInterrupt:
            raise
        except UserError as error:      # bad input is the same for every run: stop; unless another process took it
            again = _taken(run, str(error), replan)
            if again:
                continue
            raise
        except Exception as error:    # one failed run (out of memory, NaN, ...) must not end the comparison
            note = first_line(error)
            say(f"    failed: {note}")
        return read_outcome(run, DONE[plan.action], time.perf_counter() - start, note)


def _taken(run: Run, error: str, replan) -> bool:
    """Whether a run failed only because another process took it: it holds the folder now (or
    held it when ours started), or it finished the run meanwhile (planned again, it is reused)."""
    if BUSY in error or lock_holder(run.path) is not None:
        return True
    try:
        return replan(run).action == "reuse"
    except UserError:
        return False


def _run_children(runs: list[Run], plans: list[RunPlan], todo: list[int], outcomes: dict[int, RunOutcome],
                  jobs: int, say, replan, waits: _Waits) -> list[RunOutcome]:
    """The runs of ``todo`` as ``jobs`` ``esapr train`` subprocesses at once."""
    env = {**os.environ, **thread_env(jobs), "PYTHONWARNINGS": "ignore"}
    say(f"{jobs} runs at a time, each with {_threads_per_job(jobs)} thread(s) of the {_cores()} core(s) "
        f"(OMP_NUM_THREADS, MKL_NUM_THREADS, OPENBLAS_NUM_THREADS)")
    stop_with_parent = stop_with_parent_fn()
    waiting, held, active = list(todo), [], {}
    try:
        while waiting or held or active:
            for i in [i for i in held if waits.due(i) and not waits.held(i, runs[i])]:
                held.remove(i)
                plans[i] = replan(runs[i])
                waiting.insert(0, i)
            while waiting and len(active) < jobs:
                i = waiting.pop(0)
                run, plan = runs[i], plans[i]
                if plan.action in ("reuse", "damaged"):
                    outcomes[i] = read_outcome(run, "reused" if plan.action == "reuse" else "none", plan=plan)
                    continue
                if waits.held(i, run):
                    held.append(i)
                    continue
                log = _open_log(run)
                argv = [sys.executable, "-m", "esapr", *run.command(plan)[1:]]
                process = subprocess.Popen(argv, stdout=log[1], stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           env=env, start_new_session=True, preexec_fn=stop_with_parent)
                active[i] = (process, *log, time.perf_counter())
                say(f"[started] {run.template} seed {run.seed}: {plan.reason} (log {log[0]})")
            time.sleep(0.2)
            for i, (process, log, handle, start) in list(active.items()):
                if process.poll() is None:
                    continue
                handle.close()
                del active[i]
                run, plan = runs[i], plans[i]
                note = "" if process.returncode == 0 else last_error(log, process.returncode)
                if note and _taken(run, note, replan):
                    held.append(i)          # waited for (if still held), planned again, then reused
                    continue
                outcomes[i] = read_outcome(run, DONE[plan.action], time.perf_counter() - start, note)
                say(f"[{'done' if not note else 'failed'}] {run.template} seed {run.seed} "
                    f"in {outcomes[i].seconds:.0f} s{': ' + note if note else ''}")
    finally:
        for process, *_ in active.values():     # interrupted: stop the runs this call started, all at once
            process.terminate()
        for process, _, handle, _ in active.values():
            process.wait()
            handle.close()
    return [outcomes[i] for i in range(len(runs))]


def _open_log(run: Run) -> tuple[Path, Any]:
    """This process's log of one run, ``<group>/compare_logs/<run>.<pid>.log`` (its own file:
    two compares never write one log); never through a planted link."""
    folder = run.path.parent / "compare_logs"
    log = folder / f"{run.name}.{os.getpid()}.log"
    refuse_links(run.path.parent, folder, log)
    folder.mkdir(parents=True, exist_ok=True)
    refuse_links(folder)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o666)
    return log, os.fdopen(fd, "w")


def stop_with_parent_fn() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send the child SIGTERM when this process dies (Linux
    ``prctl(PR_SET_PDEATHSIG)``): a SIGKILLed compare leaves no run training unsupervised; each
    stops as interrupted and the next compare resumes it. None where prctl is unavailable."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:      # the parent died before prctl: stop now
            os.kill(os.getpid(), signal.SIGTERM)
    return preexec


def last_error(log: Path, code: int) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("esapr: error:")]
    last = errors[-1] if errors else (lines[-1] if lines else "")
    return f"exit {code}: {last[:200]}" if last else f"exit {code}"
