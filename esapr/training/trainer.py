"""One training loop for every model: epochs, optimizer, StepLR, clipping, mixed precision,
early stopping with the model's schedule at plateaus, checkpoint/resume and logging.

A closed-form model (``closed_form_grid()`` not None) runs through the same loop without an
optimizer and without epochs: step k fits the grid's k-th setting exactly, is validated and
logged (the setting in the val_log row); every setting is fitted, whatever the limits of a run
trained by steps, and the best setting's weights are tested.

Everything random in an epoch is a function of the run's seed and the epoch number (global
seeds and the batch builder's generator), so a run resumed from its checkpoint ends with the
same results, and two seeds share no random draw.

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
from typing import Callable

import numpy as np
import torch

from esapr.config import Config, resumed_config
from esapr.data.prepare import PreparedData, prepare_data
from esapr.errors import Interrupted, UserError, first_line
from esapr.experiment import Experiment, experiment_path
from esapr.models import build_model
from esapr.progress import Progress, make_progress
from esapr.training.evaluator import Evaluation, data_info, evaluate, make_builder, resolve_device
from esapr.training.precision import choose_precision, make_deterministic


# what a resumable checkpoint holds besides the optional GradScaler state
RESUMABLE = ("model", "optimizer", "lr_scheduler", "schedule", "state", "best_model")
# called after each epoch's validation with (epoch, metrics); returns a reason to stop the run there, or None
OnValidation = Callable[[int, dict], "str | None"]


@dataclass
class TrainState:
    epoch: int = 0                # last completed epoch
    best_metric: float = -math.inf
    best_epoch: int = 0
    patience_from: int = 0        # last epoch that improved or started a new stage
    stage_from: int = 0           # the epoch the current stage started after (0: the first stage)
    stopped: bool = False
    train_seconds: float = 0.0
    stop_reason: str = ""         # why a validation callback ended the run early (a search pruned it)


def epoch_seed(seed: int, epoch: int) -> int:
    """The global seed of one epoch of a run with seed ``seed``: the epoch number itself for seed
    0 (the stream every run had before the run's seed reached it, so seed-0 results are kept),
    otherwise a hash of (seed, epoch), so runs of two seeds share no random draw."""
    if seed == 0:
        return epoch
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, config: Config, data: PreparedData, progress: Progress | bool | str = True):
        self.config = config
        self.training = config.training     # None: a closed-form model
        self.data = data
        self.progress = make_progress(progress)
        run = config.run
        if run.deterministic:
            make_deterministic()
        self.device = resolve_device(run.device)
        self.info = data_info(data)
        self.model = build_model(config, self.info).to(self.device)
        if run.compile:
            self.model.compile()   # forward (the training loss) only; the state_dict keeps its names
        self.batches = make_builder(config, data, self.device)
        self.model.prepare(data)
        self.schedule = self.model.make_schedule()
        self.grid = self.model.closed_form_grid()       # None: trained by gradient steps
        self.optimizer = self.lr_scheduler = None       # a closed-form model has nothing to step
        if self.grid is None:
            training = self.training
            params = self.model.parameters()
            if training.optimizer == "SGD":
                self.optimizer = torch.optim.SGD(params, lr=training.lr, weight_decay=training.weight_decay,
                                                 momentum=training.momentum or 0.0)
            else:
                self.optimizer = torch.optim.Adam(params, lr=training.lr, weight_decay=training.weight_decay,
                                                  fused=True)
            self.lr_scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, training.decay_step, training.gamma)
        self.precision = choose_precision(run.amp, run.amp_dtype, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.scaled)
        self.state = TrainState()
        self.best_weights: dict | None = None   # a copy of the best model's state_dict so far
        self.best_val: dict | None = None       # the best epoch's validation ranks (users, rank, full_rank)

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
        if self.training.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.training.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach().float()

    def evaluate(self, split: str, limit: int | None = None) -> Evaluation:
        return evaluate(self.model, self.batches, self.config, split, limit)

    # --- checkpoints -----------------------------------------------------------------------------
    def checkpoint(self) -> dict:
        """Everything a resumed run needs, including the best weights so far: a run resumed from
        an older checkpoint replays the later epochs, and a transfer stage in that replay must
        reload the best model as of then, not one the interrupted run saved afterwards."""
        return {"model": self.model.state_dict(), "optimizer": _state(self.optimizer),
                "lr_scheduler": _state(self.lr_scheduler), "scaler": self.scaler.state_dict(),
                "schedule": self.schedule.state_dict(), "state": asdict(self.state),
                "best_model": self.best_weights, "best_val": self.best_val}

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
        self.best_val = checkpoint.get("best_val")

    def _keep_best(self, evaluation: Evaluation) -> None:
        fixed = self.model.fixed_state()
        self.best_weights = {name: value if name in fixed else value.detach().clone()
                             for name, value in self.model.state_dict().items()}
        self.best_val = {"users": torch.as_tensor(evaluation.users), "rank": torch.as_tensor(evaluation.ranks),
                         "full_rank": torch.as_tensor(evaluation.full_ranks)}

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
        """The start-up line: data, model, device, precision and how the model computes there, folder."""
        seqs = self.data.sequences
        run = self.config.run
        label = run.model_label or self.config.family.label
        note = self.model.compute_note()
        return (f"{self.data.name}: {seqs.n_users:,} users, {seqs.n_items:,} items, {seqs.n_interactions:,} "
                f"interactions | {label} ({run.model_code}) | {self.device_name()}, {self.precision.name}"
                f"{', ' + note if note else ''} | {experiment.path}")

    # --- the run -------------------------------------------------------------------------------
    def resume_from(self, experiment: Experiment) -> None:
        """Continue from the folder's checkpoint; log rows after it are dropped."""
        self.restore(experiment.load(experiment.recent_checkpoint, self.device), experiment.recent_checkpoint)
        experiment.truncate_tables(self.state.epoch)

    def epoch_limit(self) -> int:
        """How many epochs (a closed-form model: settings) the run goes to at most."""
        if self.grid is not None:
            return len(self.grid)          # every setting, always
        if self.config.run.pilot:
            return 1
        return self.training.num_epochs if self.training.num_epochs > 0 else 10**9

    def fit(self, experiment: Experiment, on_validation: OnValidation | None = None, test: bool = True) -> dict:
        """Train to early stopping or the epoch limit, then save (and, with ``test``, test) the best
        weights. ``on_validation(epoch, validation metrics)`` is called after every epoch; a reason
        it returns ends the run there, as early stopping would (a search pruning the run)."""
        config = self.config
        experiment.set_status("running")
        max_epochs = self.epoch_limit()
        limit = 1 if config.run.pilot else None
        self.progress.start_epochs(None if max_epochs == 10**9 else max_epochs, self.state.epoch)
        every = config.run.checkpoint_every_seconds
        interval = every if every is not None else experiment.default_checkpoint_interval()
        best_metric = config.evaluation.best_metric
        saved_at = time.monotonic()
        while not self.state.stopped and self.state.epoch < max_epochs:
            epoch = self.state.epoch + 1
            seed_everything(epoch_seed(config.seed, epoch))
            start = time.perf_counter()
            trained = self.run_epoch(epoch, limit)
            train_seconds = time.perf_counter() - start
            validation = self.evaluate("val", limit)
            val = validation.metrics
            setting = self.setting(epoch)
            experiment.append_row("train_log", {"epoch": epoch, **trained, "seconds": round(train_seconds, 4),
                                                **self.schedule.log_values()})
            experiment.append_row("val_log", {"epoch": epoch, **setting, **val})
            self._after_validation(epoch, validation)
            if on_validation is not None:
                self.state.stop_reason = on_validation(epoch, val) or ""
                self.state.stopped = self.state.stopped or bool(self.state.stop_reason)
            self.state.epoch = epoch
            self.state.train_seconds += time.perf_counter() - start
            last = self.state.stopped or epoch >= max_epochs
            if last or time.monotonic() - saved_at >= interval:
                experiment.save_in_background(experiment.recent_checkpoint, self.checkpoint())
                saved_at = time.monotonic()
            self.progress.epoch_done(epoch, {best_metric: f"{val[best_metric]:.4f}",
                                             "best": f"{self.state.best_metric:.4f}@{self.state.best_epoch}",
                                             **self.patience(), **self.schedule.progress_values(), **setting})
        self.progress.close()
        return self.finish(experiment, test)

    def patience(self) -> dict:
        """Epochs since the last improvement out of the patience (early stopping's countdown)."""
        if self.grid is not None:
            return {}
        return {"wait": f"{self.state.epoch - self.state.patience_from}/"
                        f"{self.schedule.patience(self.training.saturation_wait_epochs)}"}

    def _after_validation(self, epoch: int, validation: Evaluation) -> None:
        state = self.state
        metric = validation.metrics[self.config.evaluation.best_metric]
        if metric > state.best_metric:
            state.best_metric, state.best_epoch, state.patience_from = metric, epoch, epoch
            self._keep_best(validation)
        elif self.grid is None and epoch - state.patience_from >= self.schedule.patience(
                self.training.saturation_wait_epochs):
            transfer = self.schedule.on_plateau(self.model, improved=state.best_epoch > state.stage_from)
            if transfer is None:
                state.stopped = True
                return
            state.patience_from = state.stage_from = epoch
            if transfer.reload_best and self.best_weights is not None:
                self.model.load_state_dict(self.best_weights)
            self.progress.line(f"epoch {epoch}: plateau, {transfer.message}")

    def finish(self, experiment: Experiment, test: bool = True) -> dict:
        """Save and test the best weights, always (also when num_epochs ran out); without ``test``
        (a search, which reads validation only) the test split is never scored."""
        experiment.wait_for_saves()      # the last checkpoint is in place before anything says "finished"
        if self.best_weights is not None:
            self.save_best(experiment)
        self.load_best(experiment)
        run = self.config.run
        user_ids = self.data.sequences.user_ids
        tested = {}
        if test:
            evaluation = self.evaluate("test", 1 if run.pilot else None)
            tested = {"test": evaluation.metrics}
            experiment.append_row("test_log", {"epoch": self.state.best_epoch, **evaluation.metrics})
            experiment.write_ranks("test", user_ids[evaluation.users], evaluation.ranks, evaluation.full_ranks)
        if self.best_val is not None:
            best = self.best_val
            experiment.write_ranks("val", user_ids[best["users"].numpy()], best["rank"].numpy(),
                                   best["full_rank"].numpy())
        results = {**tested, "best_epoch": self.state.best_epoch, "best_val": self.state.best_metric,
                   **({"best_setting": self.setting(self.state.best_epoch)}
                      if self.grid is not None and self.state.best_epoch else {}),
                   "epochs": self.state.epoch, "train_seconds": round(self.state.train_seconds, 2),
                   "model_code": run.model_code, "dataset": self.data.name,
                   "experiment": str(experiment.path), "device": str(self.device), "device_name": self.device_name(),
                   "precision": self.precision.name, "deterministic": run.deterministic,
                   **({"stop_reason": self.state.stop_reason} if self.state.stop_reason else {})}
        experiment.write_results(results)
        experiment.set_status("finished")
        return results


def train(config: Config, data: PreparedData | None = None, progress: Progress | bool | str = True,
          given: frozenset[str] | None = None, on_validation: OnValidation | None = None, test: bool = True) -> dict:
    """Prepare data, train, test the best model; returns the results (also in results.json).
    ``given`` names the options a command line set (see ``resumed_config``); ``on_validation``
    and ``test``: see ``Trainer.fit`` (``esapr tune`` reports each epoch and never tests).

    The process holds the experiment folder's lock throughout. The folder's files are touched
    only once the data is prepared and the model is built, so a run that fails before that
    leaves no folder and replaces no earlier run."""
    progress = make_progress(progress)
    experiment = Experiment(experiment_path(config))
    with experiment.lock():
        experiment.check_can_train(config)
        resume = config.run.resume
        if resume:
            saved = experiment.read_config()
            config = resumed_config(saved, config, experiment.path, given)
            experiment.check_can_extend(saved, config)
        data = data or prepare_data(config)
        if resume:
            experiment.check_data(data.fingerprint)
        trainer = Trainer(config, data, progress)
        progress.line(trainer.summary(experiment))
        if resume:
            trainer.resume_from(experiment)
            if config.training is not None and saved.get("num_epochs") != config.num_epochs:  # extended or capped
                experiment.write_config(config, {k: v for k, v in saved.items() if k not in config.values()})
        else:
            experiment.start(config, {**asdict(trainer.info), "num_interactions": data.sequences.n_interactions,
                                      "data_fingerprint": data.fingerprint})
        try:
            return trainer.fit(experiment, on_validation, test)
        except BaseException as error:
            with suppress(Exception):    # a checkpoint being written is finished first; the original error matters
                experiment.wait_for_saves()
            with suppress(OSError):      # a full disk may refuse this too
                experiment.set_status("interrupted")
            if isinstance(error, KeyboardInterrupt):
                raise Interrupted(_interrupted_message(experiment)) from None
            if isinstance(error, BrokenPipeError):      # ``esapr train ... | head``: the reader went away
                raise Interrupted(f"its output was closed; {_interrupted_message(experiment)}") from None
            raise


def _state(stepper) -> dict | None:
    """An optimizer's or a learning-rate scheduler's state; None where a model has none."""
    return None if stepper is None else stepper.state_dict()


def _interrupted_message(experiment: Experiment) -> str:
    if experiment.recent_checkpoint.is_file():
        return f"interrupted; {experiment.path} keeps its last checkpoint: continue with --resume"
    return f"interrupted before the first checkpoint of {experiment.path}; run the same command again to start over"
