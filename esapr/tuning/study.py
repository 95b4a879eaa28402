"""One template's study: where it is stored, the settings it was made with, the sampler of each
trial, and the trials whose worker died.

Storage. By default a journal file, ``<root>/<group>/tune/<template>/study.log``
(``JournalStorage`` + ``JournalFileBackend``), locked with ``JournalFileOpenLock``: the lock is
a file created with ``O_CREAT | O_EXCL``, which a Google Drive folder mounted through FUSE (Colab)
creates atomically, whereas Optuna's default symlink lock needs symbolic links (Drive stores
none) and ``flock`` on a FUSE mount is at best local to one machine. Every write is one
appended line, so a disconnect loses at most the line being written, and a lock left by a
killed process is broken after its 30 s grace period. ``--storage URL`` (postgresql://,
sqlite:///, ...) is an Optuna ``RDBStorage``: the way several machines share one study.

A worker that dies leaves its trial RUNNING. Each worker claims its trial (``worker``: host and
pid; ``heartbeat``: a time it renews every minute), and before every trial it fails the RUNNING
trials whose worker is gone: on this host, when the pid is no longer alive and nobody holds the
trial folder's lock (``esapr.files.lock_holder``); on another host, when its heartbeat is ten
minutes old. The failed trial's values are enqueued again (``study.enqueue_trial``) with its
folder, so the retry resumes that folder's checkpoint; only the worker whose ``tell`` marked it
FAIL enqueues, so a dead trial is retried once and counted at most once (FAIL is never counted).
"""
from __future__ import annotations

import os
import re
import socket
import threading
import time
import warnings
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from esapr.errors import UserError, first_line
from esapr.files import lock_holder
from esapr.tuning.space import space_differences

HEARTBEAT_SECONDS, STALE_SECONDS = 60.0, 600.0
MAX_RETRIES = 3             # a trial whose workers died this often is given up (its values are not tried again)
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)
OPEN_ATTEMPTS = 3           # workers starting at once on a new database race to make its tables: the losers try again
STUDY_FILE = "study.log"


@dataclass
class Budget:
    """Per template: ``trials`` complete or pruned trials, ``hours`` of training (summed over
    trials; checked before each trial starts, so the last one may run past it), or both, ending at
    whichever comes first (an hours budget alone gives a closed-form fit of a second thousands of
    trials)."""
    trials: int | None = None
    hours: float | None = None

    def describe(self) -> str:
        parts = ([f"{self.trials} trials"] if self.trials is not None else []) + \
                ([f"{self.hours:g} h of training"] if self.hours is not None else [])
        return " or ".join(parts) + (", whichever comes first" if len(parts) == 2 else "")


@dataclass
class Search:
    """Everything a worker needs for one template's study (a worker process gets it pickled)."""
    template: str
    code: str
    options: dict[str, Any]         # the options given: fixed in every trial
    space: dict[str, Any]           # space.to_json
    budget: Budget
    folder: str                     # <root>/<group>/tune/<template>: the trial folders (and study.log)
    storage: str | None             # a database URL or a journal file; None: folder/study.log
    study_name: str
    metric: str
    sampler: str = "tpe"
    seed: int = 0
    warmup: int = 0                 # epochs before the default pruner judges a trial (the template's patience)
    settings: dict[str, Any] = field(default_factory=dict)      # saved with the study; compared when continued
    start: dict[str, Any] = field(default_factory=dict)         # a new study's first trial: the template's values


def safe_url(url: str) -> str:
    """A storage URL without its password (for messages)."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def open_storage(search: Search) -> optuna.storages.BaseStorage:
    url = search.storage
    if url is None or "://" not in url:
        path = Path(url) if url else Path(search.folder) / STUDY_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage
        return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
    for attempt in range(OPEN_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        except ImportError as error:    # Optuna's own, over SQLAlchemy's ModuleNotFoundError of the driver
            driver = getattr(error.__cause__, "name", None) or "its driver"
            raise UserError(f"--storage {safe_url(url)} needs the database's Python module ({driver}); install "
                            f"it (PostgreSQL: pip install \"psycopg[binary]\")") from None
        except Exception as error:      # SQLAlchemy's: no server, a refused login, or another worker making the tables
            from sqlalchemy.exc import IntegrityError, ProgrammingError
            if attempt + 1 == OPEN_ATTEMPTS or not isinstance(error, (IntegrityError, ProgrammingError)):
                raise UserError(f"--storage {safe_url(url)} cannot be opened ({first_line(error)}); check the URL "
                                f"and that the database server is running") from None
            time.sleep(1.0 + attempt)


def open_study(search: Search, pruner: optuna.pruners.BasePruner) -> optuna.Study:
    """The template's study, made if new (with its settings) or continued if its settings agree:
    another space, metric, dataset, fixed option, sampler or a lower budget is refused."""
    storage = open_storage(search)
    study = optuna.create_study(storage=storage, study_name=search.study_name, direction="maximize",
                                pruner=pruner, load_if_exists=True)
    attrs = study.user_attrs
    saved = attrs.get("settings", attrs)      # a study made by an earlier version: one attribute per setting
    if not saved:       # one write: a worker opening the study meanwhile sees every setting or none
        study.set_user_attr("settings", search.settings)
        if search.start:
            study.enqueue_trial(search.start, user_attrs={"template_values": True}, skip_if_exists=True)
        return study
    where = f"the study {search.study_name} ({safe_url(search.storage) if search.storage else search.folder})"
    now = search.settings
    for key in ("template", "model_code", "dataset", "data_fingerprint", "metric", "fixed", "sampler", "seed"):
        if saved.get(key) != now.get(key):
            raise UserError(f"{where} was made with other settings: {key} (saved {saved.get(key)!r}, now "
                            f"{now.get(key)!r}); use the study's settings, or another --experiment_group")
    changed = space_differences(saved.get("space", {}), now["space"])
    if changed:
        raise UserError(f"{where} was made with another search space: {'; '.join(changed)}; use the study's "
                        f"space, or another --experiment_group")
    before, budget = Budget(**saved["budget"]), search.budget
    if (before.trials is None, before.hours is None) != (budget.trials is None, budget.hours is None):
        raise UserError(f"{where} has a budget of {before.describe()}, now {budget.describe()}; continue it with "
                        f"the same kind of budget")
    if (budget.trials or 0) < (before.trials or 0) or (budget.hours or 0) < (before.hours or 0):
        raise UserError(f"{where} has a budget of {before.describe()}, now {budget.describe()}; a budget can be "
                        f"raised, not lowered")
    if budget != before:
        study.set_user_attr("settings", {**saved, "budget": asdict(budget)})
    return study


def sampler_for(search: Search, number: int) -> optuna.samplers.BaseSampler:
    """Trial ``number``'s sampler, seeded with (seed, number): a study resumed draws what one run
    through would have drawn, and two workers never draw alike."""
    seed = int(np.random.SeedSequence([search.seed, number]).generate_state(1)[0])
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


# --- workers and their trials --------------------------------------------------------------------
def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def claim(trial: optuna.Trial) -> None:
    """Mark ``trial`` as this process's (see ``dead``)."""
    trial.set_user_attr("worker", worker_name())
    trial.set_user_attr("heartbeat", time.time())


@contextmanager
def heartbeat(trial: optuna.Trial) -> Iterator[None]:
    """Renew the trial's heartbeat every minute while training (what tells another host it is alive)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            with suppress(Exception):       # a storage hiccup must not end the training
                trial.set_user_attr("heartbeat", time.time())

    thread = threading.Thread(target=beat, name="esapr-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def folder_of(trial: FrozenTrial) -> str:
    """The trial's experiment folder name: its own, or the one of the trial it retries."""
    return trial.user_attrs.get("folder") or f"trial_{trial.number}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with suppress(OSError, IndexError):         # a zombie (killed, not yet reaped) is dead
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def dead(trial: FrozenTrial, folder: Path) -> str | None:
    """Why a RUNNING trial's worker is gone, or None while it may be alive."""
    worker = trial.user_attrs.get("worker")
    if worker is None:      # claimed at once when asked: never claimed means its worker died then
        started = trial.datetime_start
        old = started is not None and (datetime.now() - started).total_seconds() > STALE_SECONDS
        return "its worker died before it started" if old else None
    host, _, pid = str(worker).rpartition(":")
    if host == socket.gethostname():
        if pid.isdigit() and not _alive(int(pid)) and lock_holder(folder / folder_of(trial)) is None:
            return f"its worker {worker} is gone"
        return None
    beat = trial.user_attrs.get("heartbeat")
    if isinstance(beat, (int, float)) and time.time() - beat > STALE_SECONDS:
        return f"no heartbeat from its worker {worker} for {(time.time() - beat) / 60:.0f} min"
    return None


def fail_and_retry(study: optuna.Study, trial: FrozenTrial, say, folder: Path) -> None:
    """Mark a trial FAIL and, where it has a trial folder to resume, enqueue its values again
    (only if this call was the one that failed it: another worker may have just done so)."""
    try:
        study.tell(trial.number, state=TrialState.FAIL)
    except (UpdateFinishedTrialError, ValueError, RuntimeError):
        return
    if not (folder / folder_of(trial)).is_dir():     # stopped before training: nothing to resume
        return
    retries = int(trial.user_attrs.get("retries", 0)) + 1
    if retries > MAX_RETRIES:
        say(f"trial {trial.number} failed: its workers died {retries} times; its values are not tried again")
        return
    values = {**trial.system_attrs.get("fixed_params", {}), **trial.params}     # a retry's values, all of them
    study.enqueue_trial(values, user_attrs={"folder": folder_of(trial), "retry_of": trial.number,
                                            "retries": retries})


def recover(study: optuna.Study, search: Search, say) -> None:
    """Fail and retry the RUNNING trials whose worker died."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = dead(trial, Path(search.folder))
        if reason is not None:
            say(f"trial {trial.number} ({folder_of(trial)}): {reason}; marked failed (queued again if it has a "
                f"folder to resume)")
            fail_and_retry(study, trial, say, Path(search.folder))


def spent(study: optuna.Study) -> tuple[int, float]:
    """Trials counted (complete or pruned) and the seconds every ended trial took so far: its
    training time, or its whole duration where that is longer (a closed-form fit of a tiny
    grid trains in less than the 0.01 s results.json keeps, yet a trial is never free)."""
    trials = study.get_trials(deepcopy=False)
    counted = sum(t.state in COUNTED for t in trials)
    seconds = sum(max(float(t.user_attrs.get("train_seconds", 0.0)),
                      t.duration.total_seconds() if t.duration is not None else 0.0) for t in trials)
    return counted, seconds


def budget_left(study: optuna.Study, budget: Budget) -> bool:
    counted, seconds = spent(study)
    return ((budget.trials is None or counted < budget.trials)
            and (budget.hours is None or seconds < budget.hours * 3600))


def surplus(study: optuna.Study, trial: optuna.Trial, budget: Budget) -> bool:
    """Whether workers elsewhere already took the last trials of the budget: the trials before
    this one that are done, running or queued fill it (trial numbers order the claims)."""
    if budget.trials is None:
        return False
    taken = (*COUNTED, TrialState.RUNNING, TrialState.WAITING)
    before = [t for t in study.get_trials(deepcopy=False, states=taken) if t.number < trial.number]
    return len(before) >= budget.trials


def quiet_optuna() -> None:
    """Optuna's own lines (each trial, experimental features) are left out: esapr says what happens."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
