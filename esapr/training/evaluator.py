"""Scoring a model on a split, and loading a saved run's model to score or recommend with:
what ``esapr evaluate``, ``recommend`` and the trainer share. Loading builds the model and its
batch builder only (no optimizer, no closed-form solve: the saved state holds its result)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from esapr.config import Config
from esapr.data.prepare import PreparedData
from esapr.errors import UserError
from esapr.models import DataInfo, SequentialModel, build_model
from esapr.training.metrics import MetricSums, candidate_ranks, full_ranks


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


def data_info(data: PreparedData) -> DataInfo:
    seqs = data.sequences
    n_days = int(seqs.days.max()) + 1 if seqs.n_interactions else 1
    return DataInfo(n_users=seqs.n_users, n_items=seqs.n_items, n_days=n_days)


def make_builder(config: Config, data: PreparedData, device: torch.device, training: bool = True):
    """The family's batch builder (``training=False``: evaluation and scoring batches only)."""
    return config.family.builder_class()(data, config.model, config.evaluation, device,
                                         config.training if training else None)


@torch.no_grad()
def evaluate(model: SequentialModel, batches, config: Config, split: str, limit: int | None = None) -> Evaluation:
    """Sampled metrics (answer against its negatives) and, with full_ranking, metrics against
    every item the user has not seen, averaged per user; with every user's ranks.

    Always in float32, also after mixed-precision training: a tie counts against the answer,
    and bf16/fp16 scores tie often (a VAE on ML-100K under bf16: 95 of 943 test users)."""
    model.eval()
    full_ranking = config.evaluation.full_ranking
    sums = MetricSums(config.evaluation.metric_ks)
    users, sampled, full = [], [], []
    for batch in batches.eval_batches(split, limit):
        scores = model.scores(batch) if full_ranking else None
        candidate = model.candidate_scores(batch, scores)
        ranks = candidate_ranks(candidate.float())
        sums.add(ranks)
        users.append(batch.users)
        sampled.append(ranks)
        if scores is not None:
            rows, items = batches.history_mask(batch)
            full.append(full_ranks(scores.float(), batch.answers, rows, items))
            sums.add(full[-1], prefix="full_")
        else:
            full.append(torch.full_like(ranks, -1))
    users, sampled, full = (torch.cat(part).cpu().numpy() for part in (users, sampled, full))
    return Evaluation(sums.result(), users, sampled, full)


@dataclass
class LoadedRun:
    """A saved run's model with its best weights, ready to score: what evaluate and recommend use."""
    config: Config
    data: PreparedData
    model: SequentialModel
    batches: object
    device: torch.device

    def evaluate(self, split: str) -> Evaluation:
        return evaluate(self.model, self.batches, self.config, split)


def load_run(experiment, config: Config, data: PreparedData) -> LoadedRun:
    """The run in ``experiment`` (an ``Experiment``) built from ``config`` on ``data`` (checked
    against the run's fingerprint), with its best weights."""
    experiment.check_data(data.fingerprint)
    device = resolve_device(config.run.device)
    model = build_model(config, data_info(data)).to(device)
    experiment.load_best_weights(model, device)
    return LoadedRun(config, data, model, make_builder(config, data, device, training=False), device)
