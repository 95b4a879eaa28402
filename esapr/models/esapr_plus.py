"""ESAPR+: ESAPR with a closed-form sequential linear path blended into its scores.

ESAPR's VAE (recency-weighted bag in, weighted multinomial loss, transfer training) trains as in
``vae.py``. Before its first epoch, SLIST's item-item weights W (``slist.py``: the session part
and the item -> next-item transition part over the same recency-weighted histories, one ridge
solve) are fitted from the training parts of the sequences; they are a fixed buffer, saved with
the model. The two score rows of a user live on different scales (log-probabilities against
regression outputs), so each is standardised over the items before they are added:

    s = z(VAE logits) + linear_weight * z(bag W)

The blended scores also choose the best epoch and drive the transfer stages (validation).
linear_weight 0 is ESAPR. The linear path costs one V x V solve per data and options, cached
beside the prepared data (``linear_cache_file``) and read by every later run that shares them
(other seeds, other VAE options, a search's trials), and one product per evaluation batch (sparse
on a CPU); the template's values were chosen on validation (docs/esapr_plus.md).

The VAE sees a bag: order inside the window reaches it only through the recency weights. Three
options let more of it in, each off by default (then the model, its state and its numbers are
ESAPR+'s own):

- recent_items k: the k most recent bag items also enter the encoder through embeddings of their
  own position, added to its first layer's output (what came last, not only how much it weighs);
- transition_weight: + weight * z(T[last item]), T a first-order item -> next-item matrix solved in
  closed form on the same training parts as W, T[i, j] = count(i then j) / (count(i then any) +
  transition_lambda) (the ridge solution for one-hot inputs), kept sparse and saved with the model;
- prefix_decay: every epoch each training window ends d items early, P(d) proportional to
  prefix_decay**d (``EsaprPlusBatches``), so every prefix of a history is a training target.
"""
from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import nn

from esapr.data.batches.history import HistoryBatches, RecentHistoryBatches, scored_rows, scoring_note, sparse_scoring
from esapr.data.batches.types import BagBatch
from esapr.data.prepare import cache_lock
from esapr.data.ragged import ragged_positions
from esapr.files import atomic_write
from esapr.models import DataInfo
from esapr.models.linear import check_dense_memory, solve_dtype
from esapr.models.slist import SLIST, slist_grams, slist_weights
from esapr.models.vae import VAE

# raised when the solve changes what it writes: solutions cached by an older version are not read
LINEAR_CACHE_VERSION = 1
# the transition matrix T in CSR form: row i's entries are items/values[starts[i]:starts[i + 1]]
TRANSITION_STATE = ("transition_starts", "transition_items", "transition_values")


def linear_cache_file(data, options) -> Path:
    """Where the linear path's W for ``data`` (``PreparedData``) and ``options`` is kept: in the
    prepared data's folder, named by exactly the options that change W and a hash of the sequences
    it is fitted on (not the data fingerprint, which also covers the negatives: W does not read
    them, so runs that differ only there share it)."""
    seqs = data.sequences
    digest = hashlib.sha1(f"v{LINEAR_CACHE_VERSION} {seqs.n_items}".encode())
    for array in (seqs.offsets, seqs.items):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    name = (f"max_len{options.max_len}-{options.weight_type}{float(options.weight_constant)!r}"
            f"-lambda{float(options.linear_lambda)!r}-alpha{float(options.linear_alpha)!r}-{digest.hexdigest()[:12]}")
    return Path(data.cache_dir) / "linear" / name / "weights.pt"


def read_linear(path: Path, shape: torch.Size) -> torch.Tensor | None:
    """A cached W of ``shape``, or None where there is none; a damaged file is removed (solved again)."""
    if not path.is_file():
        return None
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError):
        weights = None
    if isinstance(weights, torch.Tensor) and weights.shape == shape and weights.dtype == torch.float32:
        return weights
    path.unlink()
    return None


def standardised(scores: torch.Tensor) -> torch.Tensor:
    """Each row to mean 0 and standard deviation 1 over the items (column 0, padding, is left out
    of the statistics)."""
    items = scores[:, 1:]
    return (scores - items.mean(dim=1, keepdim=True)) / items.std(dim=1, keepdim=True).clamp_min(1e-12)


class EsaprPlus(VAE):
    def __init__(self, options, info: DataInfo):
        if options.linear_weight:
            check_dense_memory("ESAPR+'s linear path", info.n_items, SLIST.PEAK_COPIES)
        super().__init__(options, info)
        self.linear_weight = options.linear_weight
        self.solve_dtype = solve_dtype(info.n_items)
        vocab = info.n_items + 1
        self.register_buffer("linear", torch.zeros(vocab, vocab))
        self.recent = nn.ModuleList(self._position_embeddings(options.recent_items, vocab))
        self.transition_weight = options.transition_weight
        if self.transition_weight:      # T in CSR form; the entries' count is known once fitted (or loaded)
            self.register_buffer("transition_starts", torch.zeros(vocab + 1, dtype=torch.long))
            self.register_buffer("transition_items", torch.zeros(0, dtype=torch.long))
            self.register_buffer("transition_values", torch.zeros(0))
            self.register_load_state_dict_pre_hook(_take_transition_size)

    def _position_embeddings(self, k: int, vocab: int) -> list[nn.Embedding]:
        """One item table per position j = 1..k from the end of the bag, as wide as the encoder's first
        layer, drawn as the VAE draws that layer's weights (after them: the VAE's draws do not move)."""
        first = self.encoder[0]
        std = (2.0 / (first.in_features + first.out_features)) ** 0.5
        tables = [nn.Embedding(vocab, first.out_features, padding_idx=0) for _ in range(k)]
        with torch.no_grad():
            for table in tables:
                nn.init.normal_(table.weight, 0.0, std)[0] = 0      # the padding row stays 0
        return tables

    def prepare(self, data) -> None:
        """T counted; W from the cache, else solved and cached (one process solves; others wait, then read it)."""
        if self.transition_weight:
            self.fit_transitions(data)
        if self.linear_weight == 0:
            return
        path = linear_cache_file(data, self.options)
        with cache_lock(path.parent):
            weights = read_linear(path, self.linear.shape)
            if weights is None:
                weights = self.solve_linear(data).cpu()
                atomic_write(path, lambda stream: torch.save(weights, stream))
        self.linear.copy_(weights)

    def solve_linear(self, data) -> torch.Tensor:
        """SLIST's W (float32, as the buffer keeps it) on the training parts of ``data``."""
        histories = RecentHistoryBatches(data, self.options, None, self.linear.device)
        grams = slist_grams(histories, self.solve_dtype)
        return slist_weights(grams, self.options.linear_lambda, self.options.linear_alpha).to(torch.float32)

    def fit_transitions(self, data) -> None:
        """T from every (item, next item) pair of the training parts, the pairs SLIST's transition
        rows are fitted on (validation and test answers never enter)."""
        history = HistoryBatches(data, self.options, None, self.transition_starts.device)
        _, positions = ragged_positions(history.starts + 1, history.train_stop)
        before, after = history.items[positions - 1], history.items[positions]
        vocab = len(self.transition_starts) - 1
        pairs, counts = torch.unique(before * vocab + after, return_counts=True)     # sorted: row by row
        rows = pairs // vocab
        self.transition_starts[1:] = torch.cumsum(torch.bincount(rows, minlength=vocab), 0)
        self.transition_items = pairs % vocab
        predecessors = torch.bincount(before, minlength=vocab)[rows]
        self.transition_values = (counts / (predecessors + self.options.transition_lambda)).float()

    def transition_scores(self, last: torch.Tensor) -> torch.Tensor:
        """The rows T[last] [B, n_items + 1], dense (row 0, padding, is empty)."""
        rows, entries = ragged_positions(self.transition_starts[last], self.transition_starts[last + 1])
        scores = torch.zeros(len(last), len(self.transition_starts) - 1, device=last.device)
        return scores.index_put_((rows, self.transition_items[entries]), self.transition_values[entries])

    def encode(self, batch: BagBatch) -> torch.Tensor:
        """With recent_items, the first layer's output plus, for j = 1..k, position j's embedding of
        the item j slots from the end. An embedding enters only where its item's entry of the encoder
        input is not zero (input dropout's own mask: only a dropped item is zero there), scaled as
        dropout scales what it keeps: an item dropped from the bag must not reach the encoder through
        its embedding, or the loss, which reconstructs the recent items, learns to copy them."""
        if not self.recent:
            return super().encode(batch)
        x = self.encoder_input(batch)
        recent = batch.slots[:, -len(self.recent):].flip(1)        # column j - 1: j slots from the end
        kept = (x.gather(1, recent) != 0).to(x.dtype)
        p = self.input_dropout.p
        if self.training and p > 0:
            kept = kept / (1 - p)
        embedded = sum(table(recent[:, j]) * kept[:, j, None] for j, table in enumerate(self.recent))
        return self.encoder[1:](self.encoder[0](x) + embedded)

    def fixed_state(self) -> set[str]:
        return {"linear", *(TRANSITION_STATE if self.transition_weight else ())}

    def scores(self, batch: BagBatch) -> torch.Tensor:
        logits = super().scores(batch).float()
        if self.linear_weight == 0 and self.transition_weight == 0:
            return logits
        scores = standardised(logits)
        if self.linear_weight:
            bag = batch.bag.float()
            if sparse_scoring(self.linear.device):
                bag = bag.to_sparse()       # the bag's own values: identical whatever built them
            scores = scores + self.linear_weight * standardised(scored_rows(bag, self.linear))
        if self.transition_weight:      # an item never followed by anything: a row of zeros, standardised to 0
            scores = scores + self.transition_weight * standardised(self.transition_scores(batch.slots[:, -1]))
        return scores

    def compute_note(self) -> str:
        return scoring_note(self.linear.device) if self.linear_weight else ""


def _take_transition_size(module: EsaprPlus, state: dict, prefix: str, *args) -> None:
    """T's entries are as many as the saved model has: size the buffers to them before they are copied."""
    for name in TRANSITION_STATE[1:]:
        saved, own = state.get(prefix + name), getattr(module, name)
        if saved is not None and saved.shape != own.shape:
            setattr(module, name, own.new_empty(saved.shape))
