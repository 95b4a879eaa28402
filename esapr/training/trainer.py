"""One training loop for every model: epochs, optimizer, StepLR, clipping, mixed precision,
early stopping with the model's schedule at plateaus, checkpoint/resume and logging.

A closed-form model (``closed_form_grid()`` not None) runs through the same loop without an
optimizer: epoch k fits the grid's k-th setting exactly, is validated and logged (the setting in
the val_log row), and the best setting's weights are kept and tested as any best epoch's.

Everything random in an epoch is a function of the epoch number (global seeds and the batch
builder's generator), so a run resumed from its checkpoint ends with the same results.

Checkpoints suit a slow disk (Google Drive): the best weights so far live in memory and travel
inside the resumable checkpoint, which is written in the background at most every
``checkpoint_every_seconds``; ``models/best_model.pth`` is written once, at the end.
"""
from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext, suppress
from dataclasses import asdict, dataclass

import numpy as np
import torch

from esapr.config import Config, resumed_config
from esapr.data.prepare import PreparedData, prepare_data
from esapr.errors import Interrupted, UserError, first_line
from esapr.experiment import Experiment, experiment_path
from esapr.models import DataInfo, build_model
from esapr.progress import Progress, make_progress
from esapr.registry import family
from esapr.training.metrics import MetricAccumulator, candidate_ranks, full_ranks
from esapr.training.precision import choose_precision, make_deterministic


# what a resumable checkpoint holds besides the optional GradScaler state
RESUMABLE = ("model", "optimizer", "lr_scheduler", "schedule", "state", "best_model")


@dataclass
class TrainState:
    epoch: int = 0                # last completed epoch
    best_metric: float = -math.inf
    best_epoch: int = 0
    patience_from: int = 0        # last epoch that improved or started a new stage
    stopped: bool = False
    train_seconds: float = 0.0


@dataclass
class Evaluation:
    """Metrics averaged over users, and each user's 0-based rank of the answer (full_ranks: -1
    when full ranking is off)."""
    metrics: dict[str, float]
    users: np.ndarray
    ranks: np.ndarray
    full_ranks: np.ndarray


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no GPU is visible; use --device cpu or auto "
                        "(in Colab: Runtime > Change runtime type > GPU)")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def data_info(data: PreparedData) -> DataInfo:
    seqs = data.sequences
    n_days = int(seqs.days.max()) + 1 if seqs.n_interactions else 1
    return DataInfo(n_users=seqs.n_users, n_items=seqs.n_items, n_days=n_days)


class Trainer:
    def __init__(self, config: Config, data: PreparedData, progress: Progress | bool | str = True):
        self.config = config
        self.data = data
        self.progress = make_progress(progress)
        if config.deterministic:
            make_deterministic()
        self.device = resolve_device(config.device)
        self.info = data_info(data)
        self.model = build_model(config, self.info).to(self.device)
        if config.compile:
            self.model.compile()   # forward (the training loss) only; the state_dict keeps its names
        self.batches = family(config.model_code).builder_class()(data, config, self.device)
        self.model.prepare(data)
        self.schedule = self.model.make_schedule(config)
        self.grid = self.model.closed_form_grid()       # None: trained by gradient steps
        self.optimizer = self.lr_scheduler = None       # a closed-form model has nothing to step
        if self.grid is None:
            params = self.model.parameters()
            if config.optimizer == "SGD":
                self.optimizer = torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay,
                                                 momentum=config.momentum or 0.0)
            else:
                self.optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
            self.lr_scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, config.decay_step, config.gamma)
        self.precision = choose_precision(config.amp, config.amp_dtype, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.scaled)
        self.state = TrainState()
        self.best_weights: dict | None = None   # a copy of the best model's state_dict so far

    def autocast(self):
        """The training precision's autocast context (nothing for fp32)."""
        if self.precision.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.precision.dtype)

    # --- one epoch -----------------------------------------------------------------------------
    def train_epoch(self, epoch: int, limit: int | None = None) -> float:
        self.model.train()
        total, count = torch.zeros((), device=self.device), 0
        n = self.batches.num_train_batches() if limit is None else min(limit, self.batches.num_train_batches())
        for batch in self.progress.batches(self.batches.train_batches(epoch, limit), n, f"epoch {epoch}"):
            total += self.step(batch)
            count += 1
        return float(total) / max(1, count)

    def run_epoch(self, epoch: int, limit: int | None = None) -> dict:
        """Epoch ``epoch``: gradient steps (returns the loss and the learning rate to log), or a
        closed-form model's fit of its grid's setting ``epoch`` (nothing to log)."""
        if self.grid is not None:
            self.model.fit_closed_form(self.setting(epoch), self.batches)
            return {}
        loss = self.train_epoch(epoch, limit)
        self.lr_scheduler.step()
        return {"loss": loss, "lr": self.lr_scheduler.get_last_lr()[0]}

    def setting(self, epoch: int) -> dict:
        """The grid setting a closed-form model fits in ``epoch`` ({} for a model trained by steps)."""
        return {} if self.grid is None else dict(self.grid[epoch - 1])

    def step(self, batch) -> torch.Tensor:
        """One optimizer step on ``batch``; its loss (detached, float32, on the device)."""
        self.schedule.before_step(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss = self.model(batch)
        self.scaler.scale(loss).backward()
        if self.config.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach().float()

    @torch.no_grad()
    def evaluate(self, split: str, limit: int | None = None) -> Evaluation:
        """Sampled metrics (answer against its negatives) and, with full_ranking, metrics against
        every item the user has not seen, averaged per user; with every user's ranks.

        Always in float32, also after mixed-precision training: a tie counts against the answer,
        and bf16/fp16 scores tie often (a VAE on ML-100K under bf16: 95 of 943 test users)."""
        self.model.eval()
        acc = MetricAccumulator(self.config.metric_ks)
        users, sampled, full = [], [], []
        for batch in self.batches.eval_batches(split, limit):
            scores = self.model.scores(batch) if self.config.full_ranking else None
            candidate = self.model.candidate_scores(batch, scores)
            ranks = candidate_ranks(candidate.float())
            acc.add(ranks)
            users.append(batch.users)
            sampled.append(ranks)
            if scores is not None:
                rows, items = self.batches.history_mask(batch)
                full.append(full_ranks(scores.float(), batch.answers, rows, items))
                acc.add(full[-1], prefix="full_")
            else:
                full.append(torch.full_like(ranks, -1))
        users, sampled, full = (torch.cat(part).cpu().numpy() for part in (users, sampled, full))
        return Evaluation(acc.result(), users, sampled, full)

    # --- checkpoints -----------------------------------------------------------------------------
    def checkpoint(self) -> dict:
        """Everything a resumed run needs, including the best weights so far: a run resumed from
        an older checkpoint replays the later epochs, and a transfer stage in that replay must
        reload the best model as of then, not one the interrupted run saved afterwards."""
        return {"model": self.model.state_dict(), "optimizer": _state(self.optimizer),
                "lr_scheduler": _state(self.lr_scheduler), "scaler": self.scaler.state_dict(),
                "schedule": self.schedule.state_dict(), "state": asdict(self.state),
                "best_model": self.best_weights}

    def restore(self, checkpoint: dict, path) -> None:
        """The training state of a resumable checkpoint (read from ``path``); one that is not
        this run's is a UserError."""
        fix = "start the run again with --overwrite"
        missing = [key for key in RESUMABLE if key not in checkpoint]
        if missing:
            raise UserError(f"{path}: not a resumable checkpoint (it has no {', '.join(missing)}; a copy of "
                            f"best_model.pth?); {fix}")
        Experiment.load_state(self.model, checkpoint["model"], path)
        try:
            if self.optimizer is not None:
                self.optimizer.load_state_dict(checkpoint["optimizer"])
                self.lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
            if checkpoint.get("scaler"):
                self.scaler.load_state_dict(checkpoint["scaler"])
            self.schedule.load_state_dict(checkpoint["schedule"], self.model)
            self.state = TrainState(**checkpoint["state"])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise UserError(f"{path}: the checkpoint does not fit this run ({type(error).__name__}: "
                            f"{first_line(error)}); {fix}") from None
        self.best_weights = checkpoint["best_model"]

    def _keep_best(self, weights: dict) -> None:
        self.best_weights = {name: value.detach().clone() for name, value in weights.items()}

    def save_best(self, experiment: Experiment) -> None:
        """Write models/best_model.pth (at the end of a run, or whenever asked)."""
        experiment.save(experiment.best_model, {"model": self.best_weights, "epoch": self.state.best_epoch,
                                                "metric": self.state.best_metric})

    def load_best(self, experiment: Experiment) -> None:
        """The best weights into the model: this run's own, else the folder's."""
        if self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)
        else:
            experiment.load_best_weights(self.model, self.device)

    def device_name(self) -> str:
        if self.device.type == "cuda":
            return f"{self.device} ({torch.cuda.get_device_name(self.device)})"
        return str(self.device)

    def summary(self, experiment: Experiment) -> str:
        """The start-up line: data, model, device and precision, folder."""
        seqs = self.data.sequences
        label = self.config.model_label or family(self.config.model_code).label
        return (f"{self.data.name}: {seqs.n_users:,} users, {seqs.n_items:,} items, {seqs.n_interactions:,} "
                f"interactions | {label} ({self.config.model_code}) | {self.device_name()}, {self.precision.name} | "
                f"{experiment.path}")

    # --- the run -------------------------------------------------------------------------------
    def resume_from(self, experiment: Experiment) -> None:
        """Continue from the folder's checkpoint; log rows after it are dropped."""
        self.restore(experiment.load(experiment.recent_checkpoint, self.device), experiment.recent_checkpoint)
        experiment.truncate_tables(self.state.epoch)

    def fit(self, experiment: Experiment) -> dict:
        config = self.config
        experiment.set_status("running")
        max_epochs = 1 if config.pilot else (config.num_epochs if config.num_epochs > 0 else 10**9)
        if self.grid is not None:
            max_epochs = min(max_epochs, len(self.grid))
        limit = 1 if config.pilot else None
        self.progress.start_epochs(None if config.num_epochs <= 0 and self.grid is None else max_epochs,
                                   self.state.epoch)
        interval = (config.checkpoint_every_seconds if config.checkpoint_every_seconds is not None
                    else experiment.default_checkpoint_interval())
        saved_at = time.monotonic()
        while not self.state.stopped and self.state.epoch < max_epochs:
            epoch = self.state.epoch + 1
            seed_everything(epoch)
            start = time.perf_counter()
            trained = self.run_epoch(epoch, limit)
            train_seconds = time.perf_counter() - start
            val = self.evaluate("val", limit).metrics
            setting = self.setting(epoch)
            experiment.append_row("train_log", {"epoch": epoch, **trained, "seconds": round(train_seconds, 4),
                                                **self.schedule.log_values()})
            experiment.append_row("val_log", {"epoch": epoch, **setting, **val})
            self._after_validation(epoch, val[config.best_metric])
            self.state.epoch = epoch
            self.state.train_seconds += time.perf_counter() - start
            last = self.state.stopped or epoch >= max_epochs
            if last or time.monotonic() - saved_at >= interval:
                experiment.save_in_background(experiment.recent_checkpoint, self.checkpoint())
                saved_at = time.monotonic()
            self.progress.epoch_done(epoch, {config.best_metric: f"{val[config.best_metric]:.4f}",
                                             "best": f"{self.state.best_metric:.4f}@{self.state.best_epoch}",
                                             **self.schedule.progress_values(), **setting})
        self.progress.close()
        return self.finish(experiment)

    def _after_validation(self, epoch: int, metric: float) -> None:
        state = self.state
        if metric > state.best_metric:
            state.best_metric, state.best_epoch, state.patience_from = metric, epoch, epoch
            self._keep_best(self.model.state_dict())
        elif epoch - state.patience_from >= self.config.saturation_wait_epochs:
            transfer = self.schedule.on_plateau(self.model)
            if transfer is None:
                state.stopped = True
                return
            state.patience_from = epoch
            if transfer.reload_best and self.best_weights is not None:
                self.model.load_state_dict(self.best_weights)
            self.progress.line(f"epoch {epoch}: plateau, {transfer.message}")

    def finish(self, experiment: Experiment) -> dict:
        """Save and test the best weights, always (also when num_epochs ran out)."""
        experiment.wait_for_saves()      # the last checkpoint is in place before anything says "finished"
        if self.best_weights is not None:
            self.save_best(experiment)
        self.load_best(experiment)
        evaluation = self.evaluate("test", 1 if self.config.pilot else None)
        test = evaluation.metrics
        experiment.append_row("test_log", {"epoch": self.state.best_epoch, **test})
        experiment.write_ranks(self.data.sequences.user_ids[evaluation.users], evaluation.ranks, evaluation.full_ranks)
        results = {"test": test, "best_epoch": self.state.best_epoch, "best_val": self.state.best_metric,
                   **({"best_setting": self.setting(self.state.best_epoch)}
                      if self.grid is not None and self.state.best_epoch else {}),
                   "epochs": self.state.epoch, "train_seconds": round(self.state.train_seconds, 2),
                   "model_code": self.config.model_code, "dataset": self.data.name,
                   "experiment": str(experiment.path), "device": str(self.device), "device_name": self.device_name(),
                   "precision": self.precision.name, "deterministic": self.config.deterministic}
        experiment.write_results(results)
        experiment.set_status("finished")
        return results


def train(config: Config, data: PreparedData | None = None, progress: Progress | bool | str = True,
          given: frozenset[str] | None = None) -> dict:
    """Prepare data, train, test the best model; returns the results (also in results.json).
    ``given`` names the options a command line set (see ``resumed_config``).

    The process holds the experiment folder's lock throughout. The folder's files are touched
    only once the data is prepared and the model is built, so a run that fails before that
    leaves no folder and replaces no earlier run."""
    progress = make_progress(progress)
    experiment = Experiment(experiment_path(config))
    with experiment.lock():
        experiment.check_can_train(config)
        if config.resume:
            saved = experiment.read_config()
            config = resumed_config(saved, config, experiment.path, given)
            experiment.check_can_extend(saved, config)
        data = data or prepare_data(config)
        if config.resume:
            experiment.check_data(data.fingerprint)
        trainer = Trainer(config, data, progress)
        progress.line(trainer.summary(experiment))
        if config.resume:
            trainer.resume_from(experiment)
            if saved.get("num_epochs") != config.num_epochs:      # extended or capped: the limit it runs with
                experiment.write_config(config, {k: v for k, v in saved.items() if k not in config.to_dict()})
        else:
            experiment.start(config, {**asdict(trainer.info), "num_interactions": data.sequences.n_interactions,
                                      "data_fingerprint": data.fingerprint})
        try:
            return trainer.fit(experiment)
        except BaseException as error:
            with suppress(Exception):    # a checkpoint being written is finished first; the original error matters
                experiment.wait_for_saves()
            with suppress(OSError):      # a full disk may refuse this too
                experiment.set_status("interrupted")
            if isinstance(error, KeyboardInterrupt):
                raise Interrupted(_interrupted_message(experiment)) from None
            raise


def _state(stepper) -> dict | None:
    """An optimizer's or a learning-rate scheduler's state; None where a model has none."""
    return None if stepper is None else stepper.state_dict()


def _interrupted_message(experiment: Experiment) -> str:
    if experiment.recent_checkpoint.is_file():
        return f"interrupted; {experiment.path} keeps its last checkpoint: continue with --resume"
    return f"interrupted before the first checkpoint of {experiment.path}; run the same command again to start over"
