"""One training loop for every model: epochs, optimizer, StepLR, clipping, mixed precision,
early stopping with the model's schedule at plateaus, checkpoint/resume and logging.

Everything random in an epoch is a function of the epoch number (global seeds and the batch
builder's generator), so a run resumed from its checkpoint ends with the same results.
"""
from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from esapr.config import Config
from esapr.data.prepare import PreparedData, prepare_data
from esapr.errors import UserError
from esapr.experiment import Experiment
from esapr.models import DataInfo, build_model
from esapr.training.metrics import MetricAccumulator, candidate_ranks, full_ranks, history_pairs


@dataclass
class TrainState:
    epoch: int = 0                # last completed epoch
    best_metric: float = -math.inf
    best_epoch: int = 0
    patience_from: int = 0        # last epoch that improved or started a new stage
    stopped: bool = False
    train_seconds: float = 0.0


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
    def __init__(self, config: Config, data: PreparedData, progress: bool = True):
        self.config = config
        self.data = data
        self.progress = progress
        self.device = resolve_device(config.device)
        self.info = data_info(data)
        self.model = build_model(config, self.info).to(self.device)
        self.batches = self.model.batch_builder(data, config, self.device)
        self.schedule = self.model.make_schedule(config)
        params = self.model.parameters()
        if config.optimizer == "SGD":
            self.optimizer = torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay,
                                             momentum=config.momentum or 0.0)
        else:
            self.optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
        self.lr_scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, config.decay_step, config.gamma)
        use_amp = config.amp if config.amp is not None else self.device.type == "cuda"
        self.amp_dtype = None
        if use_amp and self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.state = TrainState()
        self.best_weights: dict | None = None   # a copy of the best model's state_dict so far
        self.metric_keys = self._check_best_metric()

    def _check_best_metric(self) -> list[str]:
        ks = self.config.metric_ks
        keys = [f"NDCG@{k}" for k in ks] + [f"Recall@{k}" for k in ks] + ["MRR"]
        if self.config.full_ranking:
            keys += [f"full_{key}" for key in keys]
        if self.config.best_metric not in keys:
            raise UserError(f"best_metric '{self.config.best_metric}' is not computed; choose one of {', '.join(keys)}")
        return keys

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # --- one epoch -----------------------------------------------------------------------------
    def train_epoch(self, epoch: int, limit: int | None = None) -> float:
        self.model.train()
        total, count = torch.zeros((), device=self.device), 0
        batches = self.batches.train_batches(epoch, limit)
        n = self.batches.num_train_batches() if limit is None else min(limit, self.batches.num_train_batches())
        for batch in tqdm(batches, total=n, desc=f"epoch {epoch}", leave=False, disable=not self.progress):
            self.schedule.before_step(self.model)
            self.optimizer.zero_grad(set_to_none=True)
            with self._autocast():
                loss = self.model.loss(batch)
            self.scaler.scale(loss).backward()
            if self.config.clip_grad_norm is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            total += loss.detach().float()
            count += 1
        return float(total) / max(1, count)

    @torch.no_grad()
    def evaluate(self, split: str, limit: int | None = None, keep_ranks: bool = False) -> dict:
        """Sampled metrics (answer against its negatives) and, with full_ranking, metrics against
        every item the user has not seen, averaged per user."""
        self.model.eval()
        acc = MetricAccumulator(self.config.metric_ks)
        ranks = []
        for batch in self.batches.eval_batches(split, limit):
            with self._autocast():
                scores = self.model.scores(batch) if self.config.full_ranking else None
                candidate = self.model.candidate_scores(batch, scores)
            sampled = candidate_ranks(candidate.float())
            acc.add(sampled)
            full = None
            if scores is not None:
                rows, items = history_pairs(self.batches.offsets, self.batches.items, batch["users"], batch["ends"])
                full = full_ranks(scores.float(), batch["answers"], rows, items)
                acc.add(full, prefix="full_")
            if keep_ranks:
                ranks.append((batch["users"], sampled, full if full is not None else sampled.new_full(sampled.shape, -1)))
        result = acc.result()
        if keep_ranks:
            self.last_ranks = [torch.cat(part).cpu().numpy() for part in zip(*ranks)]
        return result

    # --- checkpoints -----------------------------------------------------------------------------
    def checkpoint(self) -> dict:
        """Everything a resumed run needs, including the best weights so far: a run resumed from
        an older checkpoint replays the later epochs, and a transfer stage in that replay must
        reload the best model as of then, not one the interrupted run saved afterwards."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.lr_scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "schedule": self.schedule.state_dict(), "state": asdict(self.state),
                "best_model": self.best_weights}

    def restore(self, checkpoint: dict, experiment: Experiment) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
        if checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.schedule.load_state_dict(checkpoint["schedule"], self.model)
        self.state = TrainState(**checkpoint["state"])
        if checkpoint.get("best_model") is not None:
            self._save_best(experiment, checkpoint["best_model"], self.state.best_epoch, self.state.best_metric)
        elif experiment.best_model.is_file():  # a checkpoint written before the best weights were kept in it
            self.best_weights = experiment.load(experiment.best_model, self.device)["model"]

    def _save_best(self, experiment: Experiment, weights: dict, epoch: int, metric: float) -> None:
        self.best_weights = {name: value.detach().clone() for name, value in weights.items()}
        experiment.save(experiment.best_model, {"model": self.best_weights, "epoch": epoch, "metric": metric})

    def load_best(self, experiment: Experiment) -> None:
        self.model.load_state_dict(experiment.load(experiment.best_model, self.device)["model"])

    # --- the run -------------------------------------------------------------------------------
    def fit(self, experiment: Experiment) -> dict:
        config = self.config
        if config.resume:
            self.restore(experiment.load(experiment.recent_checkpoint, self.device), experiment)
            experiment.truncate_tables(self.state.epoch)
        experiment.set_status("running")
        max_epochs = 1 if config.pilot else (config.num_epochs if config.num_epochs > 0 else 10**9)
        limit = 1 if config.pilot else None
        epochs = tqdm(total=None if config.num_epochs <= 0 else max_epochs, initial=self.state.epoch,
                      desc="training", unit="epoch", disable=not self.progress)
        saved_at = time.monotonic()
        while not self.state.stopped and self.state.epoch < max_epochs:
            epoch = self.state.epoch + 1
            seed_everything(epoch)
            start = time.perf_counter()
            loss = self.train_epoch(epoch, limit)
            self.lr_scheduler.step()
            train_seconds = time.perf_counter() - start
            val = self.evaluate("val", limit)
            experiment.append_row("train_log", {"epoch": epoch, "loss": loss, "lr": self.lr_scheduler.get_last_lr()[0],
                                                "seconds": round(train_seconds, 4), **self.schedule.log_values()})
            experiment.append_row("val_log", {"epoch": epoch, **val})
            self._after_validation(epoch, val[config.best_metric], experiment)
            self.state.epoch = epoch
            self.state.train_seconds += time.perf_counter() - start
            last = self.state.stopped or epoch >= max_epochs
            if last or time.monotonic() - saved_at >= config.checkpoint_every_seconds:
                experiment.save(experiment.recent_checkpoint, self.checkpoint())
                saved_at = time.monotonic()
            epochs.update(1)
            epochs.set_postfix({config.best_metric: f"{val[config.best_metric]:.4f}",
                                "best": f"{self.state.best_metric:.4f}@{self.state.best_epoch}",
                                **{k: v for k, v in self.schedule.log_values().items() if k == "recover_len"}})
        epochs.close()
        return self.finish(experiment)

    def _after_validation(self, epoch: int, metric: float, experiment: Experiment) -> None:
        state = self.state
        if metric > state.best_metric:
            state.best_metric, state.best_epoch, state.patience_from = metric, epoch, epoch
            self._save_best(experiment, self.model.state_dict(), epoch, metric)
        elif epoch - state.patience_from >= self.config.saturation_wait_epochs:
            transfer = self.schedule.on_plateau(self.model)
            if transfer is None:
                state.stopped = True
                return
            state.patience_from = epoch
            if transfer.reload_best and self.best_weights is not None:
                self.model.load_state_dict(self.best_weights)
            if self.progress:
                tqdm.write(f"epoch {epoch}: plateau, {transfer.message}")

    def finish(self, experiment: Experiment) -> dict:
        """Test the best weights, always (also when num_epochs ran out)."""
        self.load_best(experiment)
        test = self.evaluate("test", 1 if self.config.pilot else None, keep_ranks=True)
        experiment.append_row("test_log", {"epoch": self.state.best_epoch, **test})
        users, sampled, full = self.last_ranks
        ids = self.data.sequences.user_ids[users]
        rank_rows = "user,rank,full_rank\n" + "".join(f"{u},{s},{f}\n" for u, s, f in zip(ids, sampled, full))
        (experiment.tables / "test_ranks.csv").write_text(rank_rows)
        results = {"test": test, "best_epoch": self.state.best_epoch, "best_val": self.state.best_metric,
                   "epochs": self.state.epoch, "train_seconds": round(self.state.train_seconds, 2),
                   "model_code": self.config.model_code, "dataset": self.data.name,
                   "experiment": str(experiment.path), "device": str(self.device)}
        experiment.write_results(results)
        experiment.set_status("finished")
        return results


def train(config: Config, data: PreparedData | None = None, progress: bool = True) -> dict:
    """Prepare data, train, test the best model; returns the results (also in results.json)."""
    experiment = Experiment.open_for_training(config)
    if config.resume:
        config = _resume_config(config, experiment)
    data = data or prepare_data(config)
    trainer = Trainer(config, data, progress)
    if not config.resume:
        experiment.write_config(config, {**asdict(trainer.info), "num_interactions": data.sequences.n_interactions})
    try:
        return trainer.fit(experiment)
    except BaseException:
        experiment.set_status("interrupted")
        raise


# options that may differ between the interrupted run and its resumption (num_epochs: to extend
# or cap a run; the epochs already run do not depend on it)
_RESUME_FREE = {"resume", "overwrite", "device", "progress", "local_data_folder", "experiment_root", "num_epochs",
                "checkpoint_every_seconds"}


def _resume_config(config: Config, experiment: Experiment) -> Config:
    """A resumed run continues with the saved config; a conflicting option is an error."""
    saved = experiment.read_config()
    changed = [k for k, v in config.to_dict().items()
               if k in saved and k not in _RESUME_FREE and k != "templates" and saved[k] != v]
    if changed:
        raise UserError(f"--resume with different options than the saved run ({', '.join(changed)}); "
                        f"drop them or start a new experiment")
    return config
