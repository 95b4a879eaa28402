"""Model registry: model_code -> class. Classes are imported only when used."""
from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch
from torch import nn

from esapr.training.schedule import Schedule

MODELS = {
    "vae": "esapr.models.vae:VAE",
    "bert": "esapr.models.bert4rec:BERT4Rec",
    "sas": "esapr.models.sasrec:SASRec",
    "tisas": "esapr.models.tisasrec:TiSASRec",
    "meantime": "esapr.models.meantime:MEANTIME",
    "marank": "esapr.models.marank:MARank",
}


@dataclass(frozen=True)
class DataInfo:
    """The dataset sizes a model needs to shape its tables."""
    n_users: int
    n_items: int
    n_days: int


class SequentialModel(nn.Module):
    """What the trainer needs from a model. ``batch_builder`` names its batch family."""
    batch_builder: type

    def loss(self, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def scores(self, batch: dict) -> torch.Tensor:
        """Scores of every item [B, n_items + 1] (column 0 is padding and is ignored)."""
        raise NotImplementedError

    def candidate_scores(self, batch: dict, scores: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of ``batch['candidates']`` [B, C]; reuses ``scores`` when already computed."""
        scores = self.scores(batch) if scores is None else scores
        return scores.gather(1, batch["candidates"])

    def make_schedule(self, config) -> Schedule:
        return Schedule()


def model_class(code: str) -> type[SequentialModel]:
    module, name = MODELS[code].split(":")
    return getattr(importlib.import_module(module), name)


def build_model(config, info: DataInfo) -> SequentialModel:
    """Build with a seeded initialisation (``model_init_seed``), independent of earlier RNG use."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.model_init_seed)
        return model_class(config.model_code)(config, info)
