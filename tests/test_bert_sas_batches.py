"""BERT / SAS / TiSAS / MARank batches built on the device, checked against slow per-example
constructions written from docs/original.md §3.3-3.4."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from esapr.config import build_config
from esapr.data.batches.bert import BertBatches, MeantimeBatches
from esapr.data.batches.sas import MarankBatches, SasBatches, TisasBatches, rescaled_timestamps
from esapr.data.sequences import Sequences
from esapr.errors import UserError
from tests.conftest import tiny

CPU = torch.device("cpu")


def make_data(lengths, n_items=30, pool=7, seed=0, timestamps=None):
    """Users with the given sequence lengths, random items, increasing timestamps with ties."""
    rng = np.random.default_rng(seed)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    items = rng.integers(1, n_items + 1, size=offsets[-1]).astype(np.int32)
    if timestamps is None:
        steps = rng.choice([0, 0, 60, 3600, 86400, 7 * 86400], size=offsets[-1])
        timestamps = np.concatenate([1_000_000_000 + np.cumsum(steps[a:b]) for a, b in zip(offsets[:-1], offsets[1:])])
    seqs = Sequences(offsets, items, np.asarray(timestamps, dtype=np.int64), np.arange(1, len(lengths) + 1),
                     np.arange(1, n_items + 1))
    test_negatives = rng.integers(1, n_items + 1, size=(len(lengths), 5))
    train_negatives = rng.integers(1, n_items + 1, size=(len(lengths), pool)) if pool else None
    return SimpleNamespace(sequences=seqs, test_negatives=test_negatives, train_negatives=train_negatives)


def builder_of(cls, data, template, **overrides):
    """``cls`` over ``data`` with the template's tiny preset, small windows and batches, then
    ``overrides``: the family's own options and the evaluation and training groups, as the trainer
    builds it."""
    small = dict(max_len=8, train_window=3, train_batch_size=4, val_batch_size=3, test_batch_size=3)
    config = build_config([template], tiny(template, **{**small, **overrides}))
    return cls(data, config.model, config.evaluation, CPU, config.training)


def user_items(data, user):
    s = data.sequences
    return s.items[s.offsets[user]:s.offsets[user + 1]].astype(np.int64)


def user_times(data, user):
    s = data.sequences
    return s.timestamps[s.offsets[user]:s.offsets[user + 1]]


def left_pad(values, length):
    values = list(values)[-length:]
    return [0] * (length - len(values)) + values


# --- BERT -------------------------------------------------------------------------------------------

def test_bert_masking_statistics_and_labels():
    data = make_data([60] * 40, n_items=50)
    builder = builder_of(BertBatches, data, "train_bert", max_len=50, train_window=10, train_batch_size=64,
                         mask_prob=0.3)
    mask_token = builder.n_items + 1
    picked = total = 0
    counts = np.zeros(3)
    for batch in builder.train_batches(1):
        tokens, labels = batch.tokens, batch.labels
        real = tokens > 0
        assert torch.all(labels[~real] == 0)                           # nothing at padding
        is_picked = labels > 0
        # a picked slot is the mask token, a random item or the original item
        assert torch.all((tokens[is_picked] == mask_token) | (tokens[is_picked] >= 1))
        counts += [int((tokens[is_picked] == mask_token).sum()),
                   int(((tokens[is_picked] != mask_token) & (tokens[is_picked] != labels[is_picked])).sum()),
                   int((tokens[is_picked] == labels[is_picked]).sum())]
        picked += int(is_picked.sum())
        total += int(real.sum())
    rate = picked / total
    assert abs(rate - 0.3) < 4 * np.sqrt(0.3 * 0.7 / total), rate
    shares = counts / counts.sum()
    # 80% mask, 10% random (minus the 1/50 chance of drawing the same item), ~10% kept
    assert abs(shares[0] - 0.8) < 0.03 and abs(shares[1] - 0.1 * 49 / 50) < 0.02 and abs(shares[2] - 0.102) < 0.02, shares


def test_bert_train_windows_match_reference():
    data = make_data([3, 12, 20, 9], n_items=25)
    builder = builder_of(BertBatches, data, "train_bert", max_len=8, train_window=3)
    users, ends = builder.train_users, builder.train_ends
    batch = builder.train_batch(users, ends, builder.generator(1))
    for row, (u, end) in enumerate(zip(users.tolist(), ends.tolist())):
        start = int(data.sequences.offsets[u])
        window = data.sequences.items[max(start, end - 8):end].astype(np.int64).tolist()
        expected = left_pad(window, 8)
        labels = batch.labels[row].tolist()
        tokens = batch.tokens[row].tolist()
        # unpicked slots keep the item, picked slots carry it as the label
        assert [lab if lab else tok for tok, lab in zip(tokens, labels)] == expected


def test_bert_batches_are_reproducible_from_the_seed():
    data = make_data([30] * 10)
    a = list(builder_of(BertBatches, data, "train_bert", max_len=20).train_batches(3))
    b = list(builder_of(BertBatches, data, "train_bert", max_len=20).train_batches(3))
    c = list(builder_of(BertBatches, data, "train_bert", max_len=20).train_batches(4))
    assert all(torch.equal(x.tokens, y.tokens) and torch.equal(x.labels, y.labels) for x, y in zip(a, b))
    assert not all(torch.equal(x.tokens, y.tokens) for x, y in zip(a, c))
    other = list(builder_of(BertBatches, data, "train_bert", max_len=20, dataloader_random_seed=5).train_batches(3))
    assert not all(torch.equal(x.tokens, y.tokens) for x, y in zip(a, other))


def test_bert_eval_masks_the_answer_and_keeps_its_time():
    data = make_data([5, 14, 9], n_items=20)
    builder = builder_of(MeantimeBatches, data, "train_meantime", max_len=6, val_batch_size=10, test_batch_size=10)
    days = data.sequences.days
    for split, back in (("val", 2), ("test", 1)):
        batch = next(builder.eval_batches(split))
        for u in range(3):
            items, times = user_items(data, u), user_times(data, u)
            pos = len(items) - back
            start = int(data.sequences.offsets[u])
            assert batch.tokens[u].tolist() == left_pad(items[:pos].tolist() + [builder.n_items + 1], 6)
            assert batch.timestamps[u].tolist() == left_pad(times[:pos + 1].tolist(), 6)
            assert batch.days[u].tolist() == left_pad(days[start:start + pos + 1].tolist(), 6)
            assert batch.candidates[u, 0] == items[pos]
            assert batch.candidates[u, 1:].tolist() == data.test_negatives[u].tolist()


def test_bert_without_extra_inputs_outputs_none():
    builder = builder_of(BertBatches, make_data([10, 10]), "train_bert")
    batch = next(builder.train_batches(1))
    assert batch.timestamps is None and batch.days is None and batch.negatives is None


# --- SAS ---------------------------------------------------------------------------------------------

def test_sas_train_shift_and_negatives_from_the_pool():
    data = make_data([3, 12, 20, 9, 4], n_items=25, pool=6)
    builder = builder_of(SasBatches, data, "train_sas", max_len=8, train_window=3)
    users, ends = builder.train_users, builder.train_ends
    batch = builder.train_batch(users, ends, builder.generator(1))
    for row, (u, end) in enumerate(zip(users.tolist(), ends.tolist())):
        start = int(data.sequences.offsets[u])
        seq = data.sequences.items[max(start, end - 9):end].astype(np.int64).tolist()
        assert batch.tokens[row].tolist() == left_pad(seq[:-1], 8)
        assert batch.labels[row].tolist() == left_pad(seq[1:], 8)
        negatives = batch.negatives[row]
        labelled = batch.labels[row] > 0
        assert torch.all(negatives[~labelled] == 0)
        assert set(negatives[labelled].tolist()) <= set(data.train_negatives[u].tolist())


def test_sas_negatives_are_uniform_over_the_pool():
    data = make_data([40], n_items=30, pool=5)
    data.train_negatives = np.array([[1, 2, 3, 4, 5]])
    builder = builder_of(SasBatches, data, "train_sas", max_len=30, train_window=0, train_batch_size=1)
    draws = torch.cat([next(builder.train_batches(e)).negatives.flatten() for e in range(1, 200)])
    counts = torch.bincount(draws[draws > 0], minlength=6)[1:].double()
    assert counts.sum() == 199 * 30  # 38 training items, windows of 31 -> 30 labels
    assert torch.all((counts / counts.sum() - 0.2).abs() < 0.02), counts


def test_sas_eval_excludes_the_answer():
    data = make_data([5, 14, 9], n_items=20)
    builder = builder_of(TisasBatches, data, "train_tisas", max_len=6, val_batch_size=10, test_batch_size=10)
    rescaled = rescaled_timestamps(data.sequences.offsets, data.sequences.timestamps)
    for split, back in (("val", 2), ("test", 1)):
        batch = next(builder.eval_batches(split))
        for u in range(3):
            items = user_items(data, u)
            start = int(data.sequences.offsets[u])
            pos = len(items) - back
            assert batch.tokens[u].tolist() == left_pad(items[:pos].tolist(), 6)
            assert batch.timestamps[u].tolist() == left_pad(rescaled[start:start + pos].tolist(), 6)
            assert batch.candidates[u, 0] == items[pos]


def test_sas_needs_a_training_pool():
    with pytest.raises(UserError, match="train_negative_sample_size"):
        build_config(["train_sas"], tiny("train_sas", train_negative_sample_size=0))


def test_tisas_train_timestamps_follow_the_tokens():
    data = make_data([3, 12, 20], n_items=25)
    builder = builder_of(TisasBatches, data, "train_tisas", max_len=8, train_window=3)
    rescaled = rescaled_timestamps(data.sequences.offsets, data.sequences.timestamps)
    batch = builder.train_batch(builder.train_users, builder.train_ends, builder.generator(1))
    for row, (u, end) in enumerate(zip(builder.train_users.tolist(), builder.train_ends.tolist())):
        start = int(data.sequences.offsets[u])
        beg = max(start, end - 9)
        assert batch.timestamps[row].tolist() == left_pad(rescaled[beg:end - 1].tolist(), 8)
        assert torch.equal(batch.timestamps[row] > 0, batch.tokens[row] > 0)


def rescaled_reference(times: list[int]) -> list[int]:
    """§3.4 as the original writes it, one user."""
    gaps = [y - x for x, y in zip(times[:-1], times[1:]) if x != y]
    scale = min(gaps) if gaps else 1
    low = min(times)
    return [round((t - low) / scale) + 1 for t in times]


def test_rescaled_timestamps_match_python_reference():
    rng = np.random.default_rng(3)
    histories = [[5, 5, 5], [7], [100, 103, 110, 110, 205], [0, 2, 3, 5, 9, 9, 10],
                 (1_000_000_000 + np.cumsum(rng.choice([0, 2, 3, 86400], size=50))).tolist()]
    # half-way cases: scale 2 and odd offsets are impossible; scale 4 with offsets 2, 6 round to even
    histories.append([10, 14, 16, 22])
    offsets = np.zeros(len(histories) + 1, dtype=np.int64)
    np.cumsum([len(h) for h in histories], out=offsets[1:])
    flat = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories])
    got = rescaled_timestamps(offsets, flat)
    expected = [v for h in histories for v in rescaled_reference(list(h))]
    assert got.tolist() == expected
    assert min(got) >= 1


# --- MARank ------------------------------------------------------------------------------------------

def test_marank_train_examples():
    data = make_data([3, 4, 12, 30], n_items=25, pool=6)
    builder = builder_of(MarankBatches, data, "train_marank", max_len=8, train_window=3, marank_max_len=4)
    seen_ends = {u: set() for u in range(4)}
    for epoch in range(1, 60):
        g = builder.generator(epoch)
        batch = builder.train_batch(builder.train_users, builder.train_ends, g)
        assert batch.tokens.shape == (len(builder.train_users), 4)
        for row, u in enumerate(builder.train_users.tolist()):
            items = user_items(data, u)
            pos = len(items) - 2
            label = int(batch.labels[row, 0])
            tokens = batch.tokens[row].tolist()
            assert batch.users[row] == u
            assert int(batch.negatives[row, 0]) in data.train_negatives[u].tolist()
            # find the end: the tokens are the items before the label, right-padded with the last
            matches = [end for end in range(2, pos + 1) if items[end - 1] == label and
                       _marank_context(items, end - 1, 4) == tokens]
            if pos >= 2:
                assert matches, (u, tokens, label)
                seen_ends[u].update(matches)
            else:  # min_uc 3: nothing before the only training item
                assert label == items[0] and tokens == [0] * 4
    # every end in [2, pos] is drawn
    assert seen_ends[2] == set(range(2, 11)) and seen_ends[3] >= set(range(2, 29))


def _marank_context(items, target, m):
    before = items[max(0, target - m):target].tolist()
    return before + [before[-1]] * (m - len(before)) if before else [0] * m


def test_marank_eval_right_pads_by_repeating():
    data = make_data([3, 4, 12], n_items=25, pool=6)
    builder = builder_of(MarankBatches, data, "train_marank", marank_max_len=4, val_batch_size=10,
                         test_batch_size=10)
    for split, back in (("val", 2), ("test", 1)):
        batch = next(builder.eval_batches(split))
        for u in range(3):
            items = user_items(data, u)
            pos = len(items) - back
            assert batch.tokens[u].tolist() == _marank_context(items, pos, 4)
            assert batch.users[u] == u and batch.candidates[u, 0] == items[pos]
