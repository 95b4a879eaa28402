"""BERT4Rec / MEANTIME batches: masked windows, built on the device (reference.md §3.3).

Training: the window items[max(start, end-T):end] is right-aligned in T slots (left padding 0);
each real token is picked with probability mask_prob, and a picked token becomes the mask token
(80%), a uniformly random item in 1..n_items (10%) or stays (10%); its label is the original item
(0 elsewhere). Evaluation: the window ends with the answer, which is replaced by the mask token.

Extra inputs come from the model class: ``batch_inputs(config)`` names any of ``timestamps``
(raw unix seconds) and ``days`` (day numbers), both over the same slots as the tokens, 0 at
padding; at evaluation they include the answer's own time (§3.3).
"""
from __future__ import annotations

import numpy as np
import torch

from esapr.data.batches import BatchBuilder, window_index


def model_inputs(config) -> frozenset:
    """The extra inputs the configured model declares (``batch_inputs(config)``), if any."""
    from esapr.models import model_class
    declared = getattr(model_class(config.model_code), "batch_inputs", None)
    return frozenset(declared(config)) if declared is not None else frozenset()


class BertBatches(BatchBuilder):
    def __init__(self, data, config, device):
        super().__init__(data, config, device)
        if not 0.0 < config.mask_prob <= 1.0:
            from esapr.errors import UserError
            raise UserError(f"option 'mask_prob' must be in (0, 1], got {config.mask_prob}")
        self.mask_token = self.n_items + 1
        self.inputs = model_inputs(config)
        seqs = data.sequences
        self.extra = {}
        if "timestamps" in self.inputs:
            self.extra["timestamps"] = torch.as_tensor(seqs.timestamps.astype(np.int64), device=device)
        if "days" in self.inputs:
            self.extra["days"] = torch.as_tensor(seqs.days.astype(np.int64), device=device)

    def _window(self, users: torch.Tensor, ends: torch.Tensor) -> tuple[dict, torch.Tensor]:
        index, valid = window_index(self.starts[users], ends, self.config.max_len)
        batch = {name: torch.where(valid, values[index], 0) for name, values in self.extra.items()}
        return batch, torch.where(valid, self.items[index], 0)

    def train_batch(self, users, ends, generator) -> dict:
        batch, tokens = self._window(users, ends)
        p = self.config.mask_prob
        draws = torch.rand(tokens.shape, generator=generator, device=self.device)
        random_items = torch.randint(1, self.n_items + 1, tokens.shape, generator=generator, device=self.device)
        picked = (draws < p) & (tokens > 0)
        kind = draws / p  # uniform on [0, 1) among picked tokens
        replacement = torch.where(kind < 0.8, self.mask_token, torch.where(kind < 0.9, random_items, tokens))
        batch["tokens"] = torch.where(picked, replacement, tokens)
        batch["labels"] = torch.where(picked, tokens, 0)
        return batch

    def eval_batch(self, users, ends) -> dict:
        batch, tokens = self._window(users, ends + 1)
        tokens[:, -1] = self.mask_token
        batch["tokens"] = tokens
        return batch
