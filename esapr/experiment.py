"""The experiment folder: config, checkpoints, CSV logs, results and status.

    <experiment_root>/<experiment_group>/<experiment_name>/     (group: the dataset by default)
        config.json  status  results.json
        models/best_model.pth  models/recent_checkpoint.pth
        tables/train_log.csv  tables/val_log.csv  tables/test_log.csv
        tables/test_ranks.csv  tables/val_ranks.csv      (per-user ranks: every metric follows from them)

This class is the only code that reads or writes an experiment folder. Every file (checkpoints,
config, results, status, each table, the ranks) is written whole to a uniquely named temporary
file beside it and renamed into place, so a kill at any point leaves the folder resumable. A
checkpoint is serialised to a local temporary file first and copied in one sequential write (a
Google Drive mount is slow at many small writes), and the resumable checkpoint is written in a
background thread from a copy of its tensors, so training goes on meanwhile. A
training process holds the folder's lock (``.lock``) from its first check to its last write.
Checkpoints hold only tensors and plain Python values and are read with
``torch.load(weights_only=True)``: loading never executes pickled code. A damaged file ends in
one line naming it and what to do. Nothing here deletes a finished run unless asked to.
"""
from __future__ import annotations

import csv
import errno
import io
import json
import math
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from esapr.config import Config, saved_config, warn_assumed_defaults
from esapr.options.spec import short
from esapr.errors import UserError, first_line
from esapr.metrics import FULL, per_user
from esapr.files import FolderLock, atomic_write, atomic_write_text, on_drive, refuse_links, remove_leftovers

TABLES = ("train_log", "val_log", "test_log")
# seconds between resumable checkpoints by default; on Drive a checkpoint is hundreds of MB (about
# 4x the parameters: 440 MB for a VAE on ML-20M) through a slow mount
CHECKPOINT_INTERVAL, DRIVE_CHECKPOINT_INTERVAL = 30.0, 300.0


def experiment_path(config: Config) -> Path:
    run = config.run
    return Path(run.experiment_root) / run.experiment_group / run.experiment_name


class Experiment:
    CONFIG = "config.json"

    def __init__(self, path: Path):
        self.path = Path(path)
        self.models = self.path / "models"
        self.tables = self.path / "tables"
        self._rows: dict[str, list[dict]] = {}   # the tables as written by this process
        self._writer: threading.Thread | None = None     # the checkpoint being written in the background
        self._write_error: BaseException | None = None

    # --- lifecycle -----------------------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[FolderLock]:
        """Hold the folder's lock (``with experiment.lock(): ...``); a run that never started leaves
        no folder. The folder, its group and its sub-folders must be real folders (a planted link
        would lead writes outside the root), and temporary files of killed writers are removed."""
        refuse_links(self.path.parent, self.path, self.models, self.tables)
        with FolderLock(self.path, "one training process per experiment folder") as held:
            for folder in (self.path, self.models, self.tables):
                remove_leftovers(folder)
            yield held

    def check_can_train(self, config: Config) -> None:
        """Refuse, before anything is written, a run this folder cannot take."""
        status = self.status()
        unfinished = status is not None and status != "finished"
        if config.run.resume:
            if self.recent_checkpoint.is_file():
                return
            if unfinished:
                raise UserError(f"{self.path}: the run stopped before its first checkpoint, so there is nothing "
                                f"to resume; run the same command without --resume to start it again")
            raise UserError(f"{self.path}: nothing to resume (no checkpoint); drop --resume to start a run")
        if config.run.overwrite or status is None or (unfinished and not self.recent_checkpoint.is_file()):
            return
        if status == "finished":
            raise UserError(f"{self.path} holds a finished run; pass --overwrite to replace it "
                            f"or choose another --experiment_name")
        raise UserError(f"{self.path} holds an unfinished run ({status}); pass --resume to continue it "
                        f"or --overwrite to start again")

    def check_can_extend(self, saved: dict, config: Config) -> None:
        """A resume of a finished run must raise its epoch limit (otherwise it would only test the
        same weights again, or train on to early stopping where a limit was meant)."""
        if self.status() != "finished":
            return
        done = self.finished_epochs()
        if config.training is None:
            raise UserError(f"{self.path} holds a finished run that fitted its whole grid; there is nothing to "
                            f"continue (--overwrite trains it again)")
        limit = config.num_epochs
        if limit == saved.get("num_epochs") or 0 < limit <= done:
            raise UserError(f"{self.path} holds a finished run of {done} epochs; to continue it pass --resume "
                            f"--num_epochs N with N above {done} (-1: until early stopping), or --overwrite to "
                            f"train it again")

    def finished_epochs(self) -> int:
        """The epochs a finished run's results.json says it ran; a value that is no whole number of
        epochs is a damaged file, named in one line."""
        epochs = (self.read_results() or {}).get("epochs", 0)
        if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or not float(epochs).is_integer() \
                or not 0 <= epochs < 2**31:
            raise UserError(f"{self.path / 'results.json'}: damaged (epochs {short(epochs)}); train the run again "
                            f"with --overwrite")
        return int(epochs)

    def start(self, config: Config, extra: dict) -> None:
        """A new run: the old run's files go first (overwrite, or an earlier start that never
        reached a checkpoint); then the folders and the config."""
        for name in ("models", "tables"):
            shutil.rmtree(self.path / name, ignore_errors=True)
        for name in ("results.json", "status", self.CONFIG):
            (self.path / name).unlink(missing_ok=True)
        self._rows.clear()
        self.models.mkdir(parents=True, exist_ok=True)
        self.tables.mkdir(parents=True, exist_ok=True)
        self.write_config(config, extra)

    def status(self) -> str | None:
        """running, interrupted or finished; None before the first start. A damaged file reads
        as "interrupted" (what it says cannot be trusted; a resume or --overwrite rewrites it)."""
        path = self.path / "status"
        if not path.is_file():
            return None
        text = path.read_bytes().decode(errors="replace").strip()
        return text if text in ("running", "interrupted", "finished") else "interrupted"

    def set_status(self, status: str) -> None:
        atomic_write_text(self.path / "status", status + "\n")

    # --- config and results --------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / self.CONFIG

    def write_config(self, config: Config, extra: dict) -> None:
        """config.json: every option the run reads, where its data is (absolute), and ``extra``."""
        data = config.data
        location = {"data_file": str(Path(data.data_file).resolve()) if data.data_file else None,
                    "local_data_folder": str(Path(data.local_data_folder).resolve())}
        atomic_write_text(self.config_file, json.dumps({**config.values(), **extra, "data_location": location},
                                                       indent=2))

    def read_config(self) -> dict:
        if not self.config_file.is_file():
            raise UserError(f"{self.path}: no {self.CONFIG}; is this an experiment folder?")
        return self._read_json(self.config_file, "the run's settings are lost: start it again with --overwrite")

    def run_config(self, **overrides) -> Config:
        """The saved run's Config (``overrides`` replace saved values, e.g. where its data is now).
        The data is looked for where the run recorded it (absolute paths, so any working folder
        will do), else where its options say."""
        saved = self.read_config()
        recorded = saved.get("data_location") or {}
        places = {}
        for name, place in recorded.items():
            if name in overrides or not isinstance(place, str):
                continue
            here = saved.get(name)       # as the run was given it: relative to the folder it ran in
            if not Path(place).exists() and isinstance(here, str) and Path(here).exists():
                continue                 # the project moved with its data: the relative path holds
            places[name] = place         # else the recorded absolute path (named by any error)
        try:
            config = saved_config(saved, **places, **overrides)
        except UserError as error:
            raise UserError(f"{self.config_file}: {error}") from None
        warn_assumed_defaults(saved, config, self.path, frozenset(overrides))
        return config

    def check_data(self, fingerprint: str) -> None:
        """Refuse data other than what the run was trained on (whatever its size)."""
        saved = self.read_config().get("data_fingerprint")
        if saved is not None and saved != fingerprint:
            raise UserError(f"{self.path}: the prepared data differs from the data this run was trained on "
                            f"(fingerprint {saved}, now {fingerprint}): the data file or a preprocessing or "
                            f"negative-sampling option changed; use the run's data or train a new experiment")

    def write_results(self, results: dict) -> None:
        atomic_write_text(self.path / "results.json", json.dumps(results, indent=2))

    def read_results(self) -> dict | None:
        path = self.path / "results.json"
        return self._read_json(path, "train the run again with --overwrite") if path.is_file() else None

    @staticmethod
    def _read_json(path: Path, fix: str) -> dict:
        try:
            value = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise UserError(f"{path}: damaged ({first_line(error)}); {fix}") from None
        if not isinstance(value, dict):
            raise UserError(f"{path}: damaged (not a JSON object); {fix}")
        return value

    # --- checkpoints -----------------------------------------------------------------------------
    @property
    def recent_checkpoint(self) -> Path:
        return self.models / "recent_checkpoint.pth"

    @property
    def best_model(self) -> Path:
        return self.models / "best_model.pth"

    def save(self, path: Path, state: dict) -> None:
        """Serialised to a local temporary file first (it vanishes with the process), so that a
        failing write (a full disk) is the file system's own error, and the file is written in one
        sequential copy."""
        import torch
        with tempfile.TemporaryFile() as local:
            try:
                torch.save(state, local)
            except RuntimeError as error:       # torch's zip writer on a full disk: "unexpected pos ..."
                folder = tempfile.gettempdir()
                raise OSError(errno.ENOSPC, f"no space left in the temporary folder while writing a checkpoint "
                                            f"({first_line(error)}; set TMPDIR to a folder with room)", folder) from None
            local.seek(0)
            atomic_write(path, lambda handle: shutil.copyfileobj(local, handle, 1 << 24))

    def save_in_background(self, path: Path, state: dict) -> None:
        """``save`` in a thread, from a copy of ``state``'s tensors on the CPU taken before this
        returns (training may change them at once). One write at a time: an earlier one is waited
        for first, and its error raised here."""
        self.wait_for_saves()
        copy = _on_cpu(state)
        self._writer = threading.Thread(target=self._save_catching, args=(path, copy), name="esapr-checkpoint")
        self._writer.start()

    def _save_catching(self, path: Path, state: dict) -> None:
        try:
            self.save(path, state)
        except BaseException as error:      # raised in the training thread by wait_for_saves
            self._write_error = error

    def wait_for_saves(self) -> None:
        """Block until a background write is done; raise its error, if any. Ctrl-C (or SIGTERM)
        meanwhile takes effect once the write is done (see ``join_whole``)."""
        if self._writer is not None:
            join_whole(self._writer)
            self._writer = None
        error, self._write_error = self._write_error, None
        if error is not None:
            raise error

    def default_checkpoint_interval(self) -> float:
        """Seconds between resumable checkpoints when the run does not say: longer on Google Drive."""
        return DRIVE_CHECKPOINT_INTERVAL if on_drive(self.path) else CHECKPOINT_INTERVAL

    def load(self, path: Path, device="cpu") -> dict:
        """A checkpoint's contents; a missing or damaged one is a UserError saying what to do."""
        import torch
        fix = ("start the run again with --overwrite" if path == self.recent_checkpoint else
               "if the run has models/recent_checkpoint.pth, --resume writes it again; otherwise train again "
               "with --overwrite")
        if not path.is_file():
            raise UserError(f"{path}: checkpoint not found; {fix}")
        try:
            state = torch.load(path, map_location=device, weights_only=True)
        except Exception as error:  # any failure to read means a damaged or foreign file
            reason = first_line(error)
            if "weights_only" in str(error) or "Weights only" in reason:   # torch's advice to unpickle: not here
                reason = "it holds more than tensors and plain values"
            raise UserError(f"{path}: damaged or not an esapr checkpoint ({reason}); {fix}") from None
        if not isinstance(state, dict) or "model" not in state:
            raise UserError(f"{path}: not an esapr checkpoint; {fix}")
        return state

    def load_weights(self, model, path: Path, device="cpu") -> None:
        """A checkpoint's weights into ``model``; weights of another shape mean other data."""
        self.load_state(model, self.load(path, device)["model"], path)

    def has_weights(self) -> bool:
        """Whether a model can be loaded: the final best model, or a checkpoint of a run still going."""
        return self.best_model.is_file() or self.recent_checkpoint.is_file()

    def load_best_weights(self, model, device="cpu") -> None:
        """The run's best weights into ``model``: models/best_model.pth, written when a run ends;
        for a run still going or interrupted, the best weights inside its resumable checkpoint."""
        if self.best_model.is_file() or not self.recent_checkpoint.is_file():
            self.load_weights(model, self.best_model, device)
            return
        weights = self.load(self.recent_checkpoint, device).get("best_model")
        if weights is None:
            raise UserError(f"{self.path}: no best model yet (no epoch has finished validation); train longer")
        self.load_state(model, weights, self.recent_checkpoint)

    @staticmethod
    def load_state(model, weights: dict, path: Path) -> None:
        """``weights`` (read from ``path``) into ``model``; weights of another shape mean other data."""
        try:
            model.load_state_dict(weights)
        except RuntimeError as error:
            lines = [line.strip() for line in str(error).splitlines()]
            detail = next((line for line in lines if line.startswith(("size mismatch", "Missing key", "Unexpected key"))),
                          first_line(error))
            raise UserError(f"{path}: the weights do not fit the model built from the data and options now "
                            f"({detail}); the data or the options changed since training") from None

    # --- tables --------------------------------------------------------------------------------
    def append_row(self, table: str, row: dict) -> None:
        """Add a row; the table is written whole and renamed into place (never half a row)."""
        rows = self._rows.setdefault(table, self.read_table(table))
        rows.append({key: value for key, value in row.items()})
        self._write_table(table, rows)

    def read_table(self, table: str) -> list[dict]:
        """The rows of a log table; a row without every column (a file cut short by an older
        version) is left out."""
        path = self.tables / f"{table}.csv"
        if not path.is_file():
            return []
        try:
            with open(path, newline="") as handle:
                rows = list(csv.DictReader(handle))
        except (OSError, UnicodeDecodeError, csv.Error) as error:
            raise UserError(f"{path}: damaged ({first_line(error)}); delete it to drop the log, or start the run "
                            f"again with --overwrite") from None
        return [r for r in rows if None not in r.values() and None not in r and _is_epoch(r.get("epoch"))]

    def _write_table(self, table: str, rows: list[dict]) -> None:
        path = self.tables / f"{table}.csv"
        if not rows:
            path.unlink(missing_ok=True)
            return
        buffer = io.StringIO()
        columns = list(dict.fromkeys(key for row in rows for key in row))   # a foreign table keeps its columns
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(path, buffer.getvalue())

    def truncate_tables(self, last_epoch: int) -> None:
        """Drop log rows written after the checkpoint a resumed run continues from (each table
        rewritten whole, atomically); the test log goes, as the resumed run tests again."""
        for table in TABLES:
            rows = [r for r in self.read_table(table) if table != "test_log" and int(float(r["epoch"])) <= last_epoch]
            self._rows[table] = rows
            self._write_table(table, rows)

    # --- per-user ranks: every metric of a split is computed from them ------------------------------
    def ranks_file(self, split: str = "test") -> Path:
        return self.tables / f"{split}_ranks.csv"

    def write_ranks(self, split: str, user_ids: np.ndarray, ranks: np.ndarray, full_ranks: np.ndarray) -> None:
        """Each user's 0-based rank of the answer among the sampled candidates and among all
        unseen items (-1: full ranking off): the test split, and validation at the best epoch."""
        frame = pd.DataFrame({"user": user_ids, "rank": ranks, "full_rank": full_ranks})
        atomic_write_text(self.ranks_file(split), frame.to_csv(index=False))

    def read_ranks(self, split: str = "test") -> pd.DataFrame:
        path = self.ranks_file(split)
        if not path.is_file():
            raise UserError(f"{self.path}: no tables/{path.name} (the run has not been tested yet)")
        try:
            frame = pd.read_csv(path, dtype={"user": str}, keep_default_na=False)
        except (OSError, ValueError, UnicodeDecodeError) as error:
            raise UserError(f"{path}: damaged ({first_line(error)}); train again with --overwrite") from None
        if list(frame.columns) != ["user", "rank", "full_rank"]:
            raise UserError(f"{path}: damaged (columns {list(frame.columns)}); train again with --overwrite")
        return frame

    def test_metrics(self, names: list[str]) -> dict[str, float]:
        """Test metrics ``names`` of a finished run: those results.json holds, the others computed
        from the saved per-user ranks (and added to results.json where that is safe, so they are
        there next time; see ``_add_test_metrics``)."""
        results = self.read_results() or {}
        test = dict(results.get("test") or {})
        missing = [name for name in names if name not in test]
        if missing:
            ranks = self.read_ranks("test")
            for name in missing:
                column = ranks["full_rank" if name.startswith(FULL) else "rank"].to_numpy()
                test[name] = float(per_user(column, name).mean()) if (column >= 0).all() else math.nan
            if results:
                self._add_test_metrics(results, test)
        return {name: test[name] for name in names}

    def _add_test_metrics(self, read: dict, test: dict) -> None:
        """results.json (as ``read``) with ``test`` in it, written under the folder's lock when that
        is free at once and the file has not changed since. A process that holds the lock (training
        the run again) or changed the file owns it; a folder that cannot be written stays as it is.
        The metrics are returned all the same, and computed again next time."""
        try:
            with self.lock():
                if self.read_results() == read:
                    self.write_results({**read, "test": test})
        except (UserError, OSError):
            pass


def join_whole(thread: threading.Thread) -> None:
    """``thread.join()`` with SIGINT and SIGTERM held back until it returns (they are delivered
    then). Python 3.11's join, interrupted by Ctrl-C while the thread runs, releases the thread's
    own lock: the thread then counts as ended while it still writes, and a later join can fail
    with "RuntimeError: release unlocked lock" (a Ctrl-C of ``esapr compare --jobs 2``)."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held) if hasattr(signal, "pthread_sigmask") else None
    try:
        thread.join()
    finally:
        if previous is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _on_cpu(value):
    """``value`` (a checkpoint's dicts, lists and tensors) with every tensor copied to the CPU."""
    import torch
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _on_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(item) for item in value)
    return value


def _is_epoch(value) -> bool:
    try:
        return float(value).is_integer()
    except (TypeError, ValueError):
        return False
