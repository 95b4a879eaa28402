"""ESAPR: Multi-VAE over a recency-weighted bag of items, trained with a weighted multinomial
likelihood over the last ``recover_len`` window slots and transfer training (docs/original.md §4.1,
§5.3, §5.5).
"""
from __future__ import annotations

import torch
from torch import nn

from esapr.data.batches.types import BagBatch
from esapr.data.batches.vae import position_weights
from esapr.models import DataInfo, SequentialModel
from esapr.models.schedule import Schedule, Transfer

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def _stack(sizes: list[int], activation: str) -> nn.Sequential:
    """Linear layers with ``activation`` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i > 0 and activation != "none":
            layers.append(ACTIVATIONS[activation]())
        layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


class VAE(SequentialModel):
    def __init__(self, options, info: DataInfo):
        super().__init__()
        vocab = info.n_items + 1
        hidden = list(options.encoder_hidden_layer or [])
        self.latent = options.encode_len
        self.max_len = options.max_len
        self.legacy_bag = options.legacy_bag
        self.scaled_loss = options.scaled_loss
        self.normalize = nn.BatchNorm1d(vocab) if options.normalize_type == "batch" else None
        self.input_dropout = nn.Dropout(options.dropout)
        self.encoder = _stack([vocab, *hidden, 2 * self.latent], "relu")
        self.decoder = _stack([self.latent, *reversed(hidden), vocab], options.decoder_activation)
        self.register_buffer("weights", position_weights(options.weight_type, options.max_len, options.weight_constant),
                             persistent=False)
        self.recover_len = options.max_len   # set by the schedule
        self.options = options
        # set by the schedule before each step: a tensor, so that a step is the same graph every time
        # (a Python float changing every step makes torch.compile or a CUDA graph start again)
        self.register_buffer("kl_weight", torch.zeros(()), persistent=False)
        for layer in self.modules():
            if isinstance(layer, nn.Linear):  # as vae-cf-pytorch
                std = (2.0 / (layer.in_features + layer.out_features)) ** 0.5
                nn.init.normal_(layer.weight, 0.0, std)
                nn.init.normal_(layer.bias, 0.0, 0.001)

    def encoder_input(self, batch: BagBatch) -> torch.Tensor:
        """Normalised bag with input dropout. With L2 normalisation the dropout mask is drawn per
        distinct bag item ([B, S] draws instead of [B, n_items+1]; zeros stay zeros either way)."""
        bag = batch.bag
        if self.normalize is not None:
            return self.input_dropout(self.normalize(bag))
        norm = bag.norm(dim=1, keepdim=True).clamp_min(1e-12)
        p = self.input_dropout.p
        if not self.training or p == 0:
            return bag / norm
        slots = batch.slots
        kept = (torch.rand(slots.shape, device=bag.device) >= p) & batch.last
        dropped = torch.zeros_like(bag).scatter_add_(1, slots, bag.gather(1, slots) * kept)
        return dropped / (norm * (1 - p))

    def encode(self, batch: BagBatch) -> torch.Tensor:
        """The encoder's output [B, 2 * latent] (a hook: ESAPR+ adds embeddings of the last items)."""
        return self.encoder(self.encoder_input(batch))

    def logits(self, batch: BagBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(decoder logits [B, n_items + 1], mu, logvar)."""
        h = self.encode(batch)
        mu, logvar = h[:, :self.latent], h[:, self.latent:]
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return self.decoder(z), mu, logvar

    def forward(self, batch: BagBatch) -> torch.Tensor:
        logits, mu, logvar = self.logits(batch)
        r = self.recover_len
        labels = batch.labels[:, -r:]
        w = self.weights[-r:].expand_as(labels)
        if not self.legacy_bag:
            w = w * (labels != 0)
        logp = torch.log_softmax(logits.float(), dim=1).gather(1, labels)
        recon = (w * logp).sum(1)
        if self.scaled_loss:
            recon = recon * (self.weights.sum() / self.weights[-r:].sum())
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
        return -recon.mean() + self.kl_weight * kl.float().mean()

    def scores(self, batch: BagBatch) -> torch.Tensor:
        return self.logits(batch)[0]

    def ruled_out(self, batch: BagBatch, scores: torch.Tensor) -> torch.Tensor:
        """As the original: items in the input window (and pad 0) are never ranked."""
        scores = scores.masked_fill(batch.bag != 0, float("-inf"))
        scores[:, 0] = float("-inf")
        return scores

    def make_schedule(self) -> Schedule:
        return TransferSchedule(self.options)


class TransferSchedule(Schedule):
    """KL annealing (beta = min(cap, steps / total)) and transfer training: at each plateau
    halve recover_len down to 1, optionally shrink dropout and reload the best weights. A stage
    may have its own patience, and the run may end at the first stage that brings nothing (most
    of the original's ~280 epochs on ML-100K buy almost nothing on validation)."""

    def __init__(self, options):
        self.total_anneal_steps = options.total_anneal_steps
        self.anneal_cap = options.anneal_cap
        self.train_transfer = options.train_transfer
        self.best_model_transfer = options.best_model_transfer
        self.decrease_dropout = options.decrease_dropout
        self.max_len = options.max_len
        self.base_dropout = options.dropout
        self.recover_len = options.max_len
        self.update_count = 0
        self.stage_patience = options.stage_patience
        self.stop_at_idle_stage = options.stop_at_idle_stage

    def _apply(self, model: VAE) -> None:
        model.recover_len = self.recover_len
        if self.decrease_dropout:
            model.input_dropout.p = self.base_dropout * self.recover_len / self.max_len

    def before_step(self, model: VAE) -> None:
        model.kl_weight.fill_(self.kl_weight())
        self.update_count += 1

    def kl_weight(self) -> float:
        """beta of the next step."""
        if self.total_anneal_steps > 0:
            return min(self.anneal_cap, self.update_count / self.total_anneal_steps)
        return self.anneal_cap

    def patience(self, default: int) -> int:
        return self.stage_patience or default

    def on_plateau(self, model: VAE, improved: bool) -> Transfer | None:
        if not self.train_transfer or self.recover_len <= 1 or (self.stop_at_idle_stage and not improved):
            return None
        self.recover_len //= 2
        self._apply(model)
        return Transfer(self.best_model_transfer, f"recover_len -> {self.recover_len}")

    def log_values(self) -> dict:
        return {"recover_len": self.recover_len, "kl_weight": self.kl_weight()}

    def progress_values(self) -> dict:
        return {"recover_len": self.recover_len}

    def state_dict(self) -> dict:
        return {"recover_len": self.recover_len, "update_count": self.update_count}

    def load_state_dict(self, state: dict, model: VAE) -> None:
        self.recover_len = int(state["recover_len"])
        self.update_count = int(state["update_count"])
        self._apply(model)
