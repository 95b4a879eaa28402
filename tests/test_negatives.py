"""Negative samplers: the legacy path reproduces the original's negatives exactly; the fast path
draws the same distribution (successive sampling without replacement) without a per-user loop."""
import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest

from esapr.data import negatives as neg_module
from esapr.data.negatives import _Alias, cache_name, cached_negatives, sample_negatives
from esapr.data.sequences import Sequences
from esapr.errors import UserError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ML100K = SHARED / "data" / "ml-100k-original-order"


def make_sequences(histories: list[list[int]], n_items: int) -> Sequences:
    lengths = [len(h) for h in histories]
    offsets = np.zeros(len(histories) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    items = np.array([i for h in histories for i in h], dtype=np.int32)
    return Sequences(offsets, items, np.arange(len(items), dtype=np.int64),
                     np.arange(1, len(histories) + 1), np.arange(101, 101 + n_items))


def random_sequences(n_users=300, n_items=80, seed=0) -> Sequences:
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1)
    popularity /= popularity.sum()
    histories = [(rng.choice(n_items, int(rng.integers(3, 40)), p=popularity) + 1).tolist() for _ in range(n_users)]
    return make_sequences(histories, n_items)


def check_rows(seqs: Sequences, negatives: np.ndarray, size: int) -> None:
    assert negatives.shape == (seqs.n_users, size) and negatives.dtype == np.int32
    for user in range(seqs.n_users):
        row = negatives[user]
        assert row.min() >= 1 and row.max() <= seqs.n_items
        assert len(np.unique(row)) == size, f"duplicates in row {user}"
        assert not np.isin(row, seqs.user_items(user)).any(), f"seen item in row {user}"


# --- the original's negatives ---------------------------------------------------------------------

@pytest.mark.skipif(not (ML100K / "ratings.csv").is_file(), reason="shared ML-100K reference data absent")
def test_legacy_popular_reproduces_original_negatives():
    from esapr.data.sequences import build_sequences
    from esapr.data.sources import read_user_file

    seqs = build_sequences(read_user_file(ML100K / "ratings.csv"), 0, 5, 5)
    expected = {}
    for line in (ML100K / "popular_negatives_seed98765.txt").read_text().splitlines():
        if line.strip():
            user, *items = (int(x) for x in line.split())
            expected[user] = items
    negatives = sample_negatives(seqs, "popular", 100, 98765, legacy=True)
    got = {int(user): seqs.item_ids[negatives[row] - 1].tolist() for row, user in enumerate(seqs.user_ids)}
    assert len(got) == len(expected) == 943
    mismatched = [user for user in expected if got[user] != expected[user]]
    assert not mismatched, f"{len(mismatched)} users differ, e.g. user {mismatched[0]}"


def test_legacy_matches_per_user_randomstate_choice():
    """The legacy path is the original loop: one RandomState, users in order, p renormalised."""
    seqs = random_sequences(n_users=40, n_items=60, seed=1)
    for code in ("random", "popular"):
        got = sample_negatives(seqs, code, 7, 5, legacy=True)
        rs = np.random.RandomState(5)
        counts = np.bincount(seqs.items, minlength=61)[1:]
        base = counts / counts.sum() if code == "popular" else np.ones(60) / 60
        for user in range(seqs.n_users):
            p = base.copy()
            p[seqs.user_items(user) - 1] = 0
            p = p / p.sum()
            np.testing.assert_array_equal(got[user], rs.choice(np.arange(1, 61), 7, replace=False, p=p))


# --- fast path ------------------------------------------------------------------------------------

@pytest.mark.parametrize("code", ["random", "popular"])
@pytest.mark.parametrize("size", [1, 10, 35])
def test_fast_rows_are_unseen_unique_and_deterministic(code, size):
    seqs = random_sequences()
    first = sample_negatives(seqs, code, size, 7)
    check_rows(seqs, first, size)
    np.testing.assert_array_equal(first, sample_negatives(seqs, code, size, 7))
    assert not np.array_equal(first, sample_negatives(seqs, code, size, 8))


def test_size_zero_is_empty():
    seqs = random_sequences(n_users=5)
    for legacy in (False, True):
        out = sample_negatives(seqs, "popular", 0, 1, legacy=legacy)
        assert out.shape == (5, 0) and out.dtype == np.int32


def test_unknown_code_is_a_user_error():
    with pytest.raises(UserError, match="sampler"):
        sample_negatives(random_sequences(n_users=5), "pop", 5, 0)


def exact_tuple_probabilities(weights: dict[int, float], size: int) -> dict[tuple, float]:
    """Successive sampling without replacement (numpy's choice(replace=False, p)), enumerated."""
    out = {}
    for tup in itertools.permutations(weights, size):
        prob, left = 1.0, sum(weights.values())
        for item in tup:
            prob *= weights[item] / left
            left -= weights[item]
        out[tup] = prob
    return out


def chi_square(rows: np.ndarray, probabilities: dict[tuple, float]) -> tuple[float, int]:
    tuples, counts = np.unique(rows, axis=0, return_counts=True)
    observed = {tuple(t): c for t, c in zip(tuples.tolist(), counts.tolist())}
    assert set(observed) <= set(probabilities), "a tuple the exact distribution does not allow"
    n = len(rows)
    stat = sum((observed.get(t, 0) - n * p) ** 2 / (n * p) for t, p in probabilities.items())
    return stat, len(probabilities) - 1


def popularity_case(n_test: int, counts: list[int], seen_by_test: list[int]) -> tuple[Sequences, dict]:
    """``n_test`` identical users who saw ``seen_by_test``, plus one user per item i holding it
    counts[i-1] times (so the popularity counts are known exactly)."""
    n_items = len(counts)
    histories = [list(seen_by_test) for _ in range(n_test)]
    histories += [[item] * c for item, c in enumerate(counts, start=1) if c]
    seqs = make_sequences(histories, n_items)
    totals = np.bincount(seqs.items, minlength=n_items + 1)[1:]
    unseen = {item: float(totals[item - 1]) for item in range(1, n_items + 1) if item not in seen_by_test}
    return seqs, unseen


@pytest.mark.parametrize("route", ["rejection", "dense", "rejection-then-dense", "rejection-chunked"])
def test_fast_popular_draws_successive_sampling_distribution(route, monkeypatch):
    """Ordered 3-tuples of identical users follow the exact successive-sampling probabilities
    (chi-square far below a generous bound; a uniform or with-replacement sampler fails it)."""
    size = 3
    if route == "dense":        # a pool smaller than 2 * size takes the dense path
        counts, seen = [5, 1, 2, 3, 4, 5], [1]
    else:                       # a high acceptance rate among many items takes rejection rounds
        counts, seen = [3000, 6000, 9000, 12000, 15000, 18000, 0] + [0] * 53, [7]
    if route == "rejection-then-dense":  # one draw per round, one round: the dense path continues
        monkeypatch.setattr(neg_module, "_MAX_ROUNDS", 1)
        monkeypatch.setattr(neg_module, "_draws_for", lambda need, share: np.ones_like(np.asarray(share, float)))
    if route == "rejection-chunked":    # many chunks of 50 users share one reused mark block
        monkeypatch.setattr(neg_module, "_MARK_CELLS", 0)
        monkeypatch.setattr(neg_module, "_MIN_CHUNK_USERS", 50)
    seqs, unseen = popularity_case(6000, counts, seen)
    unseen = {item: w for item, w in unseen.items() if w > 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the count-holding users may have short pools
        rows = sample_negatives(seqs, "popular", size, 123)[:6000]
    stat, dof = chi_square(rows, exact_tuple_probabilities(unseen, size))
    assert stat < dof + 6 * np.sqrt(2 * dof), (stat, dof)
    # first draws: probability proportional to popularity among the unseen
    first = np.bincount(rows[:, 0], minlength=len(counts) + 1)
    total = sum(unseen.values())
    for item, w in unseen.items():
        assert abs(first[item] / 6000 - w / total) < 0.03


def test_mark_block_is_reset_after_sampling(monkeypatch):
    """Chunks reuse one mark block: whatever a chunk marks (seen items, taken items, draws beyond
    the need) must be cleared, or it would leak into the next chunk's users as 'seen'."""
    monkeypatch.setattr(neg_module, "_MARK_CELLS", 0)
    monkeypatch.setattr(neg_module, "_MIN_CHUNK_USERS", 16)
    seqs = random_sequences(n_users=100)
    weights = neg_module.item_weights(seqs, "popular")
    marks = neg_module._Marks(seqs, weights)
    assert (marks.mark == neg_module._EMPTY).all()
    negatives = neg_module._fast(marks, weights, 20, 4)
    assert (marks.mark == neg_module._EMPTY).all()
    check_rows(seqs, negatives, 20)


def test_fast_random_is_uniform_over_unseen():
    seqs, unseen = popularity_case(20000, [1] * 30, [2, 5])
    rows = sample_negatives(seqs, "random", 2, 9)[:20000]
    stat, dof = chi_square(rows, exact_tuple_probabilities({i: 1.0 for i in unseen}, 2))
    assert stat < dof + 6 * np.sqrt(2 * dof), (stat, dof)


def test_alias_table_is_exact():
    rng = np.random.default_rng(0)
    for weights in (rng.integers(0, 40, 500), np.ones(9, dtype=np.int64), np.array([0, 7, 0, 1, 3])):
        table = _Alias(weights)
        mass = table.threshold.astype(np.int64)
        np.add.at(mass, table.alias, table.total - mass)
        np.testing.assert_array_equal(mass, weights * len(weights))  # column mass = n * weight


# --- short pools ----------------------------------------------------------------------------------

@pytest.mark.parametrize("legacy", [False, True])
def test_short_pool_takes_all_unseen_then_repeats_with_one_warning(legacy):
    # 10 items; user 0 saw 1..7 (3 unseen), user 1 saw 1..2 (8 unseen); size 5
    seqs = make_sequences([[1, 2, 3, 4, 5, 6, 7], [1, 2], [3, 8, 9, 10]], 10)
    with pytest.warns(UserWarning, match=r"size 5 exceeds the unseen items of 1 users \(fewest: 3\)") as record:
        rows = sample_negatives(seqs, "popular", 5, 3, legacy=legacy)
    assert len([w for w in record if issubclass(w.category, UserWarning)]) == 1
    assert sorted(set(rows[0].tolist())) == [8, 9, 10]
    assert sorted(rows[0, :3].tolist()) == [8, 9, 10]          # all unseen items first, then repeats
    for user in (1, 2):
        assert len(set(rows[user].tolist())) == 5 and not set(rows[user].tolist()) & set(seqs.user_items(user).tolist())


@pytest.mark.parametrize("legacy", [False, True])
def test_size_beyond_the_catalogue_repeats_every_row(legacy):
    seqs = make_sequences([[1, 2], [3], [4, 4, 5]], 6)
    with pytest.warns(UserWarning, match="exceeds the unseen items of 3 users"):
        rows = sample_negatives(seqs, "random", 9, 0, legacy=legacy)
    assert rows.shape == (3, 9)
    for user in range(3):
        unseen = sorted(set(range(1, 7)) - set(seqs.user_items(user).tolist()))
        assert sorted(rows[user, :len(unseen)].tolist()) == unseen
        assert set(rows[user].tolist()) == set(unseen)


def test_user_who_saw_everything_is_a_user_error():
    seqs = make_sequences([[1, 2, 3], [1]], 3)
    with pytest.raises(UserError, match="every item"):
        sample_negatives(seqs, "random", 1, 0)


# --- cache ----------------------------------------------------------------------------------------

def test_cache_round_trip_and_damaged_file(tmp_path):
    seqs = random_sequences(n_users=30)
    first = cached_negatives(seqs, tmp_path, "popular", 10, 98765)
    path = tmp_path / "negatives-popular-size10-seed98765.npy"
    assert path.is_file() and cache_name("popular", 10, 98765) == path.name
    assert cache_name("popular", 10, 98765, legacy=True) == "negatives-popular-size10-seed98765-legacy.npy"
    np.testing.assert_array_equal(np.load(path), first)
    # a cached file is used as it is (not redrawn)
    marker = first.copy()
    marker[0, 0] = first[0, 1]
    np.save(path, marker)
    np.testing.assert_array_equal(cached_negatives(seqs, tmp_path, "popular", 10, 98765), marker)
    # a damaged file is regenerated, identically
    path.write_bytes(b"\x93NUMPY garbage")
    np.testing.assert_array_equal(cached_negatives(seqs, tmp_path, "popular", 10, 98765), first)
    np.testing.assert_array_equal(np.load(path), first)
    # a file of the wrong shape (other sequences) is regenerated too
    np.save(path, first[:5])
    np.testing.assert_array_equal(cached_negatives(seqs, tmp_path, "popular", 10, 98765), first)
    assert not [p for p in tmp_path.iterdir() if p.name != path.name]   # no temporary left behind
    assert cached_negatives(seqs, tmp_path, "random", 0, 0).shape == (30, 0)
