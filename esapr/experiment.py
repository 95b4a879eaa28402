"""The experiment folder: config, checkpoints, CSV logs, results and status.

    <experiment_root>/<experiment_group>/<experiment_name>/     (group: the dataset by default)
        config.json  status  results.json
        models/best_model.pth  models/recent_checkpoint.pth
        tables/train_log.csv  tables/val_log.csv  tables/test_log.csv  tables/test_ranks.csv

This class is the only code that reads or writes an experiment folder. Whole files (checkpoints,
config, results, status, ranks, rewritten tables) are written to a uniquely named temporary file
beside the target and renamed into place. Checkpoints hold only tensors and plain Python values,
so ``torch.load(weights_only=True)`` reads them. Nothing here deletes a finished run unless asked
to overwrite it.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from esapr.config import Config
from esapr.errors import UserError

TABLES = ("train_log", "val_log", "test_log")


def experiment_path(config: Config) -> Path:
    return Path(config.experiment_root) / config.experiment_group / config.experiment_name


class Experiment:
    CONFIG = "config.json"

    def __init__(self, path: Path):
        self.path = Path(path)
        self.models = self.path / "models"
        self.tables = self.path / "tables"

    # --- lifecycle -----------------------------------------------------------------------------
    def check_can_train(self, config: Config) -> None:
        """Refuse, before anything is written, a run this folder cannot take."""
        status = self.status()
        if config.resume:
            if not self.recent_checkpoint.is_file():
                if status is None:
                    raise UserError(f"{self.path}: nothing to resume (no checkpoint); drop --resume to start it")
                raise UserError(f"{self.path}: the run has no checkpoint to resume from; "
                                f"start again with --overwrite")
        elif status is not None and not config.overwrite:
            if status == "finished":
                raise UserError(f"{self.path} holds a finished run; pass --overwrite to replace it "
                                f"or choose another --experiment_name")
            raise UserError(f"{self.path} holds an unfinished run ({status}); pass --resume to continue it "
                            f"or --overwrite to start again")

    def start(self, config: Config, extra: dict) -> None:
        """A new run: with overwrite, the old run's files go first; then the folders and config."""
        if config.overwrite:
            for name in ("models", "tables"):
                shutil.rmtree(self.path / name, ignore_errors=True)
            for name in ("results.json", "status", "config.json"):
                (self.path / name).unlink(missing_ok=True)
        self.models.mkdir(parents=True, exist_ok=True)
        self.tables.mkdir(parents=True, exist_ok=True)
        self.write_config(config, extra)

    def status(self) -> str | None:
        path = self.path / "status"
        return path.read_text().strip() if path.is_file() else None

    def set_status(self, status: str) -> None:
        _atomic_write_text(self.path / "status", status + "\n")

    # --- config and results --------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / self.CONFIG

    def write_config(self, config: Config, extra: dict) -> None:
        _atomic_write_text(self.config_file, json.dumps({**config.to_dict(), **extra}, indent=2))

    def read_config(self) -> dict:
        if not self.config_file.is_file():
            raise UserError(f"{self.path}: no {self.CONFIG}; is this an experiment folder?")
        return self._read_json(self.config_file)

    def write_results(self, results: dict) -> None:
        _atomic_write_text(self.path / "results.json", json.dumps(results, indent=2))

    def read_results(self) -> dict | None:
        path = self.path / "results.json"
        return self._read_json(path) if path.is_file() else None

    def _read_json(self, path: Path) -> dict:
        try:
            value = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise UserError(f"{path}: cannot be read ({error}); it is damaged") from None
        if not isinstance(value, dict):
            raise UserError(f"{path}: not a JSON object; it is damaged")
        return value

    # --- checkpoints -----------------------------------------------------------------------------
    @property
    def recent_checkpoint(self) -> Path:
        return self.models / "recent_checkpoint.pth"

    @property
    def best_model(self) -> Path:
        return self.models / "best_model.pth"

    def save(self, path: Path, state: dict) -> None:
        import torch
        _atomic_write(path, lambda handle: torch.save(state, handle))

    def load(self, path: Path, device="cpu") -> dict:
        import torch
        if not path.is_file():
            raise UserError(f"{path}: checkpoint not found")
        try:
            return torch.load(path, map_location=device, weights_only=True)
        except (RuntimeError, EOFError, OSError) as error:
            raise UserError(f"{path}: cannot be read ({str(error).splitlines()[0]})") from None

    # --- tables --------------------------------------------------------------------------------
    def append_row(self, table: str, row: dict) -> None:
        path = self.tables / f"{table}.csv"
        new = not path.is_file() or path.stat().st_size == 0
        with open(path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    def read_table(self, table: str) -> list[dict]:
        path = self.tables / f"{table}.csv"
        if not path.is_file():
            return []
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))

    def truncate_tables(self, last_epoch: int) -> None:
        """Drop log rows written after the checkpoint a resumed run continues from (each table
        rewritten whole, atomically); the test log goes, as the resumed run tests again."""
        for table in TABLES:
            path = self.tables / f"{table}.csv"
            rows = [r for r in self.read_table(table) if table != "test_log" and int(float(r["epoch"])) <= last_epoch]
            if not rows:
                path.unlink(missing_ok=True)
                continue
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
            _atomic_write_text(path, buffer.getvalue())

    # --- per-user test ranks -------------------------------------------------------------------------
    @property
    def ranks_file(self) -> Path:
        return self.tables / "test_ranks.csv"

    def write_ranks(self, user_ids: np.ndarray, ranks: np.ndarray, full_ranks: np.ndarray) -> None:
        """Each test user's 0-based rank of the answer among the sampled candidates and among all
        unseen items (-1: full ranking off)."""
        frame = pd.DataFrame({"user": user_ids, "rank": ranks, "full_rank": full_ranks})
        _atomic_write_text(self.ranks_file, frame.to_csv(index=False))

    def read_ranks(self) -> pd.DataFrame:
        if not self.ranks_file.is_file():
            raise UserError(f"{self.path}: no tables/test_ranks.csv (the run has not been tested yet)")
        return pd.read_csv(self.ranks_file)


def _atomic_write(path: Path, write) -> None:
    """``write(binary handle)`` into a unique temporary file beside ``path``, then rename it there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda handle: handle.write(text.encode()))
