"""What every model is to the trainer: ``forward(batch)`` returns the training loss, ``scores``
scores every item, ``candidate_scores`` the evaluation candidates; a closed-form model (EASE,
SLIST) has no loss but a grid of settings it fits exactly (``closed_form_grid``). The registry
(``esapr.families``) maps model_code to the class; a model is built from its family's options."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from esapr.data.batches.types import Batch
from esapr.models.schedule import Schedule


@dataclass(frozen=True)
class DataInfo:
    """The dataset sizes a model needs to shape its tables."""
    n_users: int
    n_items: int
    n_days: int


class SequentialModel(nn.Module):
    def forward(self, batch: Batch) -> torch.Tensor:
        """The training loss of ``batch`` (a scalar)."""
        raise NotImplementedError

    def scores(self, batch: Batch) -> torch.Tensor:
        """Scores of every item [B, n_items + 1] (column 0 is padding and is ignored)."""
        raise NotImplementedError

    def candidate_scores(self, batch: Batch, scores: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of ``batch.candidates`` [B, C]; from ``scores`` when already computed, else
        from ``direct_candidate_scores`` where the model has a cheaper path, else all scores."""
        if scores is None:
            direct = self.direct_candidate_scores(batch)
            if direct is not None:
                return direct
            scores = self.scores(batch)
        return self.ruled_out(batch, scores).gather(1, batch.candidates)

    def direct_candidate_scores(self, batch: Batch) -> torch.Tensor | None:
        """The candidates' scores without scoring every item, or None (the default)."""
        return None

    def ruled_out(self, batch: Batch, scores: torch.Tensor) -> torch.Tensor:
        """Scores with the items a model never ranks (for the sampled protocol) set to -inf."""
        return scores

    def make_schedule(self) -> Schedule:
        return Schedule()

    def compute_note(self) -> str:
        """How the model computes on its device where that is chosen by device (the start-up line
        says it: "sparse item-item scoring"); '' by default."""
        return ""

    def prepare(self, data) -> None:
        """Fit what the model computes in closed form from the training data (``PreparedData``),
        before its first epoch; nothing by default. A loaded model is not prepared: its state
        holds the result."""

    def fixed_state(self) -> set[str]:
        """Names of state entries that ``prepare`` sets and training never changes: a copy of the
        best weights shares them instead of cloning them at every improvement."""
        return set()

    def closed_form_grid(self) -> list[dict] | None:
        """A closed-form model's settings (option -> value), fitted in order by ``fit_closed_form``,
        one per epoch; the trainer validates each and keeps the best. None (the default): the
        model is trained by gradient steps on ``forward``'s loss."""
        return None

    def fit_closed_form(self, setting: dict, batches) -> None:
        """Set the weights to the exact solution for ``setting`` on ``batches``' training rows."""
        raise NotImplementedError


def build_model(config, info: DataInfo) -> SequentialModel:
    """The family's model from its own options, with a seeded initialisation (``model_init_seed``;
    0 for a closed-form model, which has nothing random), independent of earlier RNG use."""
    seed = config.training.model_init_seed if config.training is not None else 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return config.family.model_class()(config.model, info)
