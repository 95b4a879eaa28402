"""The experiment folder: config, checkpoints, CSV logs, results and status.

    <experiment_root>/<experiment_group>/<experiment_name>/
        config.json  status  results.json
        models/best_model.pth  models/recent_checkpoint.pth
        tables/train_log.csv  tables/val_log.csv  tables/test_log.csv

Checkpoints are written atomically (temp file + rename) and hold only tensors and plain Python
values, so ``torch.load(weights_only=True)`` reads them. Nothing here deletes a finished run
unless asked to overwrite it.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import torch

from esapr.config import Config
from esapr.errors import UserError

TABLES = ("train_log", "val_log", "test_log")


def experiment_path(config: Config) -> Path:
    return Path(config.experiment_root) / config.experiment_group / config.experiment_name


class Experiment:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.models = self.path / "models"
        self.tables = self.path / "tables"

    # --- lifecycle -----------------------------------------------------------------------------
    @classmethod
    def open_for_training(cls, config: Config) -> "Experiment":
        """A new run, a resumed one, or a clear refusal when the folder already holds a run."""
        exp = cls(experiment_path(config))
        status = exp.status()
        if config.resume:
            if not exp.recent_checkpoint.is_file():
                if status is None:
                    raise UserError(f"{exp.path}: nothing to resume (no checkpoint); drop --resume to start it")
                raise UserError(f"{exp.path}: the run has no checkpoint to resume from; "
                                f"start again with --overwrite")
            return exp
        if status is not None and not config.overwrite:
            if status == "finished":
                raise UserError(f"{exp.path} holds a finished run; pass --overwrite to replace it "
                                f"or choose another --experiment_name")
            raise UserError(f"{exp.path} holds an unfinished run ({status}); pass --resume to continue it "
                            f"or --overwrite to start again")
        if config.overwrite:
            for name in ("models", "tables"):
                shutil.rmtree(exp.path / name, ignore_errors=True)
            for name in ("results.json", "status", "config.json"):
                (exp.path / name).unlink(missing_ok=True)
        exp.models.mkdir(parents=True, exist_ok=True)
        exp.tables.mkdir(parents=True, exist_ok=True)
        return exp

    def status(self) -> str | None:
        path = self.path / "status"
        return path.read_text().strip() if path.is_file() else None

    def set_status(self, status: str) -> None:
        _atomic_write_text(self.path / "status", status + "\n")

    # --- config and results --------------------------------------------------------------------
    def write_config(self, config: Config, extra: dict) -> None:
        _atomic_write_text(self.path / "config.json", json.dumps({**config.to_dict(), **extra}, indent=2))

    def read_config(self) -> dict:
        path = self.path / "config.json"
        if not path.is_file():
            raise UserError(f"{self.path}: no config.json; is this an experiment folder?")
        return json.loads(path.read_text())

    def write_results(self, results: dict) -> None:
        _atomic_write_text(self.path / "results.json", json.dumps(results, indent=2))

    def read_results(self) -> dict | None:
        path = self.path / "results.json"
        return json.loads(path.read_text()) if path.is_file() else None

    # --- checkpoints -----------------------------------------------------------------------------
    @property
    def recent_checkpoint(self) -> Path:
        return self.models / "recent_checkpoint.pth"

    @property
    def best_model(self) -> Path:
        return self.models / "best_model.pth"

    def save(self, path: Path, state: dict) -> None:
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    def load(self, path: Path, device="cpu") -> dict:
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
        """Drop log rows written after the checkpoint a resumed run continues from."""
        for table in TABLES:
            rows = [r for r in self.read_table(table) if int(float(r["epoch"])) <= last_epoch and table != "test_log"]
            path = self.tables / f"{table}.csv"
            path.unlink(missing_ok=True)
            for row in rows:
                self.append_row(table, row)


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
