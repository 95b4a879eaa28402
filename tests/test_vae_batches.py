"""The ESAPR bag built on the device equals a slow, obviously correct per-example construction."""
import numpy as np
import pytest
import torch

from esapr.data.batches import gather_windows, training_ends
from esapr.data.batches.vae import build_bag, position_weights


def dense_bag_reference(window: list[int], weights: list[float], vocab: int, legacy: bool) -> np.ndarray:
    """docs/original.md §3.5 step 3, one example at a time: slots 0..N-2, left to right."""
    bag = np.zeros(vocab, dtype=np.float32)
    for item, w in zip(window[:-1], weights[:-1]):
        if legacy:
            bag[item] = w          # the original's non-accumulating write: the last slot wins
        elif item != 0:
            bag[item] += w         # fixed: no padding, repeats add up
    return bag


@pytest.mark.parametrize("weight_type", ["exp_stair", "exp", "linear", "constant"])
@pytest.mark.parametrize("legacy", [True, False])
def test_bag_matches_dense_reference(weight_type, legacy):
    rng = np.random.default_rng(0)
    n, vocab = 16, 9
    weights = position_weights(weight_type, n, 2.0)
    windows = []
    for length in [16, 5, 1, 12]:  # full, padded, single item, padded with repeats
        items = rng.integers(1, vocab, size=length)
        windows.append([0] * (n - length) + items.tolist())
    label = torch.tensor(windows)
    bag = build_bag(label[:, :-1], weights[:-1], vocab, legacy).numpy()
    for row, window in enumerate(windows):
        np.testing.assert_array_equal(bag[row], dense_bag_reference(window, weights.tolist(), vocab, legacy))


def test_exp_stair_values_from_reference():
    w = position_weights("exp_stair", 128, 2.0)
    assert w[-1] == 2.0 and w[-2] == 1.0 and w[-3] == 0.5 and w[-4] == 0.5 and w[-5] == 0.25
    assert float(w.sum()) == pytest.approx(9.0)
    assert float(w[:-1].sum()) == pytest.approx(7.0)


def test_legacy_pad_weight_is_the_slot_next_to_the_first_item():
    w = position_weights("linear", 8, 1.0)
    label = torch.tensor([[0, 0, 0, 0, 0, 3, 4, 5]])
    bag = build_bag(label[:, :-1], w[:-1], 6, legacy=True)
    assert bag[0, 0] == w[4]   # slot N-L-1 with L = 3
    assert bag[0, 5] == 0      # the target is not in the input


def test_training_ends_follow_reference_windows():
    # one user with 12 items: pos = n - 2 = 10; T = 4, W = 3 -> relative ends 10, 7, 4
    # a second user with 5 items: pos = 3 < T -> one window ending at 3
    offsets = np.array([0, 12, 17])
    users, ends = training_ends(offsets, max_len=4, window=3)
    assert users.tolist() == [0, 0, 0, 1]
    assert ends.tolist() == [10, 7, 4, 12 + 3]
    users, ends = training_ends(offsets, max_len=4, window=None)
    assert ends.tolist() == [10, 15]


def test_gather_windows_right_aligned_and_left_padded():
    items = torch.arange(1, 18)             # two users: rows 0..11 and 12..16
    starts = torch.tensor([0, 12])
    ends = torch.tensor([10, 14])
    windows = gather_windows(items, starts, ends, 4)
    assert windows.tolist() == [[7, 8, 9, 10], [0, 0, 13, 14]]
