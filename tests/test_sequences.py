"""Preprocessing (docs/original.md §1.2) on hand-computed cases, the CSR layout, the leave-one-out split,
the .npz cache and its key, and the real MovieLens-100K counts."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from esapr.config import build_config, build_data_options
from esapr.data.prepare import cache_dir, load_sequences
from esapr.data.sequences import Sequences, build_sequences
from esapr.data.sources import SOURCES, RawInteractions, read_user_file
from esapr.errors import UserError
from tests.conftest import SHARED_DATA, closed_port_url


def raw_from(rows: list[tuple], with_rating: bool = True) -> RawInteractions:
    """rows of (user, item, timestamp[, rating]) in file order."""
    users = np.array([r[0] for r in rows])
    items = np.array([r[1] for r in rows])
    ts = np.array([r[2] for r in rows], dtype=np.int64)
    rating = np.array([r[3] for r in rows], dtype=np.float64) if with_rating else None
    return RawInteractions(users, items, ts, rating)


def histories(seqs: Sequences) -> dict:
    """original user id -> list of original item ids in sequence order."""
    return {seqs.user_ids[u].item(): seqs.item_ids[seqs.user_items(u) - 1].tolist() for u in range(seqs.n_users)}


# --- filters ------------------------------------------------------------------------------------

def test_filter_order_items_then_users_one_pass_each():
    """min_sc=2, min_uc=3. Item counts: A 4, B 2, C 3, D 2, E 1 -> E is dropped. On the item-filtered
    rows, users have u1 3, u2 2, u3 2 (its E is gone), u4 4 -> u2, u3 dropped. Item B keeps one row
    (u1's): fewer than min_sc, and it stays, because the filter is not iterated."""
    rows = [("u1", "A", 1, 5), ("u1", "B", 2, 5), ("u1", "C", 3, 5),
            ("u2", "A", 1, 5), ("u2", "B", 2, 5),
            ("u3", "A", 1, 5), ("u3", "C", 2, 5), ("u3", "E", 3, 5),
            ("u4", "A", 1, 5), ("u4", "C", 2, 5), ("u4", "D", 3, 5), ("u4", "D", 4, 5)]
    seqs = build_sequences(raw_from(rows), min_rating=0, min_sc=2, min_uc=3)
    assert histories(seqs) == {"u1": ["A", "B", "C"], "u4": ["A", "C", "D", "D"]}
    assert seqs.item_ids.tolist() == ["A", "B", "C", "D"]
    assert np.bincount(seqs.items).tolist() == [0, 2, 1, 2, 2]     # B: 1 row < min_sc
    # users first (on unfiltered data) would keep u3; an iterated filter would drop B and then u1
    assert "u3" not in histories(seqs) and "u1" in histories(seqs)


def test_min_rating_is_applied_before_counting():
    """X has 2 rows, but one is rated 1: with min_rating=3 it has 1 row left and min_sc=2 drops it;
    user v then has 3 rows left (the low-rated row is gone too)."""
    rows = [("v", "X", 1, 5), ("v", "Y", 2, 5), ("v", "Z", 3, 5), ("v", "Y", 4, 5),
            ("w", "X", 1, 1), ("w", "Y", 2, 5), ("w", "Z", 3, 4), ("w", "Z", 4, 3)]
    seqs = build_sequences(raw_from(rows), min_rating=3, min_sc=2, min_uc=3)
    assert histories(seqs) == {"v": ["Y", "Z", "Y"], "w": ["Y", "Z", "Z"]}
    # without the rating filter, X survives (2 rows) and both users keep 4 rows
    seqs = build_sequences(raw_from(rows), min_rating=0, min_sc=2, min_uc=3)
    assert histories(seqs) == {"v": ["X", "Y", "Z", "Y"], "w": ["X", "Y", "Z", "Z"]}


def test_min_sc_zero_keeps_every_item():
    rows = [(1, 10, 1, 5), (1, 11, 2, 5), (1, 12, 3, 5)]
    assert build_sequences(raw_from(rows), 0, 0, 3).n_items == 3
    with pytest.raises(UserError, match="no interactions left after filtering"):
        build_sequences(raw_from(rows), 0, 2, 3)


def test_min_uc_below_three_is_refused():
    with pytest.raises(UserError, match="min_uc must be at least 3"):
        build_sequences(raw_from([(1, 1, 1, 5)] * 3), 0, 0, 2)


# --- ids, order, split, days ----------------------------------------------------------------------

def test_dense_ids_are_sorted_unique_and_one_based():
    rows = [(30, 300, 5, 5), (10, 5, 1, 5), (20, 40, 1, 5), (30, 5, 6, 5), (10, 40, 2, 5), (20, 300, 2, 5),
            (10, 300, 3, 5), (20, 5, 3, 5), (30, 40, 7, 5)]
    seqs = build_sequences(raw_from(rows), 0, 0, 3)
    assert seqs.user_ids.tolist() == [10, 20, 30] and seqs.user_ids.dtype == np.int64
    assert seqs.item_ids.tolist() == [5, 40, 300]
    # 5 -> 1, 40 -> 2, 300 -> 3; row u is the u-th smallest user
    assert seqs.items.tolist() == [1, 2, 3,  2, 3, 1,  3, 1, 2]
    assert seqs.offsets.tolist() == [0, 3, 6, 9]
    assert seqs.item_index() == {5: 1, 40: 2, 300: 3} and seqs.user_index() == {10: 0, 20: 1, 30: 2}


def test_string_ids_sort_as_text():
    rows = [("B", "b00z", 1, 5), ("A10", "0205", 1, 5), ("A9", "b00a", 1, 5)] * 3
    seqs = build_sequences(raw_from(rows), 0, 0, 3)
    assert seqs.user_ids.tolist() == ["A10", "A9", "B"]          # text order, not numeric
    assert seqs.item_ids.tolist() == ["0205", "b00a", "b00z"]
    assert seqs.item_ids.dtype.kind == "U"                       # storable without pickle


def test_equal_timestamps_keep_file_order():
    rows = [(1, 7, 100, 5), (1, 3, 100, 5), (1, 9, 50, 5), (1, 4, 100, 5), (1, 8, 200, 5)]
    seqs = build_sequences(raw_from(rows), 0, 0, 3)
    assert seqs.item_ids[seqs.items - 1].tolist() == [9, 7, 3, 4, 8]
    assert seqs.timestamps.tolist() == [50, 100, 100, 100, 200]


def test_large_tie_groups_are_stable():
    """40 rows with one timestamp (beyond any insertion-sort cut-off) and other users interleaved."""
    rng = np.random.default_rng(0)
    items = rng.permutation(np.arange(1, 41))
    rows = []
    for k, item in enumerate(items):
        rows.append((2, int(item), 1000, 5))
        rows.append((1, int(item), 1000 + (k % 3), 5))
    seqs = build_sequences(raw_from(rows), 0, 0, 3)
    assert seqs.item_ids[seqs.user_items(1) - 1].tolist() == items.tolist()
    expected_user1 = [int(items[k]) for t in range(3) for k in range(40) if k % 3 == t]
    assert seqs.item_ids[seqs.user_items(0) - 1].tolist() == expected_user1


def test_leave_one_out_positions():
    rows = [(1, 1, 1, 5), (1, 2, 2, 5), (1, 3, 3, 5), (1, 4, 4, 5),
            (2, 5, 1, 5), (2, 6, 2, 5), (2, 7, 3, 5)]
    seqs = build_sequences(raw_from(rows), 0, 0, 3)
    assert seqs.target_positions("train").tolist() == [2, 5]       # exclusive end: items[0:n-2]
    assert seqs.target_positions("val").tolist() == [2, 5]
    assert seqs.target_positions("test").tolist() == [3, 6]
    assert seqs.items[seqs.target_positions("val")].tolist() == [3, 6]     # second last
    assert seqs.items[seqs.target_positions("test")].tolist() == [4, 7]     # last
    train_end = seqs.target_positions("train")
    assert [seqs.items[seqs.offsets[u]:train_end[u]].tolist() for u in range(2)] == [[1, 2], [5]]
    with pytest.raises(ValueError, match="unknown split"):
        seqs.target_positions("tets")


def test_days_are_utc_calendar_days_since_the_first():
    day = 86400
    ts = [10 * day + 80_000, 11 * day + 100, 10 * day + 86_399, 13 * day, 12 * day - 1]
    rows = [(1, i + 1, t, 5) for i, t in enumerate(ts)]
    seqs = build_sequences(raw_from(rows), 0, 0, 3)
    assert seqs.timestamps.tolist() == sorted(ts)
    # 10d+80000 -> 0, 10d+86399 -> 0, 11d+100 -> 1 (only 6.5 h later), 12d-1 -> 1, 13d -> 3
    assert seqs.days.tolist() == [0, 0, 1, 1, 3]


def test_days_before_1970():
    rows = [(1, 1, -1, 5), (1, 2, 0, 5), (1, 3, -86401, 5)]
    assert build_sequences(raw_from(rows), 0, 0, 3).days.tolist() == [0, 1, 2]


def test_no_time_column_means_file_order(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("user,item\n1,30\n1,10\n1,20\n")
    seqs = build_sequences(read_user_file(path), 0, 0, 3)
    assert seqs.item_ids[seqs.items - 1].tolist() == [30, 10, 20]


# --- cache ------------------------------------------------------------------------------------------

def test_npz_round_trip(tmp_path):
    rows = [("A2XYZ", "B00X", 3, 4.0), ("A2XYZ", "0205", 1, 5.0), ("A2XYZ", "B00Y", 2, 5.0)]
    seqs = build_sequences(raw_from(rows), 0, 0, 3)
    seqs.save(tmp_path / "deep" / "sequences.npz")
    assert not list((tmp_path / "deep").glob("*.tmp*"))
    back = Sequences.load(tmp_path / "deep" / "sequences.npz")
    for name in ("offsets", "items", "timestamps", "user_ids", "item_ids"):
        assert np.array_equal(getattr(back, name), getattr(seqs, name))
        assert getattr(back, name).dtype == getattr(seqs, name).dtype
    assert back.items.dtype == np.int32 and back.offsets.dtype == np.int64


def write_ml100k(folder: Path, n_users: int = 6, n_items: int = 8) -> Path:
    """A small u.data: every user rates every item (so any filter up to n_items keeps all)."""
    lines = [f"{u}\t{i}\t{1 + (u + i) % 5}\t{1000 * u + 10 * i}" for u in range(1, n_users + 1)
             for i in range(1, n_items + 1)]
    path = folder / "ml-100k" / "u.data"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cache_key_follows_the_raw_file_and_the_options_that_change_the_data(tmp_path):
    raw = write_ml100k(tmp_path)
    config = build_data_options({"dataset_code": "ml-100k", "local_data_folder": str(tmp_path),
                                 "data_url": closed_port_url("ml-100k.zip")})
    first, folder, read = load_sequences(config)
    assert read == raw and (folder / "sequences.npz").is_file() and first.n_interactions == 48
    assert re.fullmatch(r"ml-100k-[0-9a-f]{10}_min_rating0\.0-min_uc5-min_sc5-splitleave_one_out", folder.name)
    same = build_config(["train_vae"], {"dataset_code": "ml-100k", "local_data_folder": str(tmp_path),
                                        "lr": 0.1, "train_batch_size": 7, "dropout": 0.1}).data   # a run's data
    assert cache_dir(same, raw) == folder
    (folder / "sequences.npz").write_bytes(b"")           # the cache answers, or a rebuilt one does
    again, _, _ = load_sequences(same)
    assert np.array_equal(again.items, first.items)
    for option, value in (("min_uc", 6), ("min_sc", 6), ("min_rating", 3)):
        other = build_data_options({"dataset_code": "ml-100k", "local_data_folder": str(tmp_path), option: value})
        assert cache_dir(other, raw) != folder and f"{option}{value}" in cache_dir(other, raw).name
    raw.write_text(raw.read_text().replace("\t5\t", "\t4\t", 1))   # the raw file changed: a new key
    os.utime(raw, ns=(1, 1))
    assert cache_dir(config, raw) != folder


def test_damaged_cache_is_rebuilt(tmp_path):
    write_ml100k(tmp_path)
    config = build_data_options({"dataset_code": "ml-100k", "local_data_folder": str(tmp_path)})
    first, folder, _ = load_sequences(config)
    good = (folder / "sequences.npz").read_bytes()
    for damaged in (b"not a zip", good[: len(good) // 2]):      # garbage, and a truncated archive
        (folder / "sequences.npz").write_bytes(damaged)
        rebuilt, _, _ = load_sequences(config)
        assert np.array_equal(rebuilt.items, first.items)


def test_user_file_cache_key_changes_with_the_file(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("user,item\n" + "".join(f"{u},{i}\n" for u in range(1, 6) for i in range(1, 7)))
    config = build_data_options({"data_file": str(path), "local_data_folder": str(tmp_path)})
    before = cache_dir(config, path)
    assert load_sequences(config)[0].n_interactions == 30
    path.write_text(path.read_text() + "6,1\n6,2\n6,3\n6,4\n6,5\n")
    assert cache_dir(config, path) != before
    assert load_sequences(config)[0].n_users == 6


# --- real data ---------------------------------------------------------------------------------------

def test_real_ml100k_default_filter(ml100k_dir, tmp_path):
    raw = SOURCES["ml-100k"].reader(ml100k_dir / "u.data")
    assert len(raw) == 100_000
    seqs = build_sequences(raw)
    assert (seqs.n_users, seqs.n_items, seqs.n_interactions) == (943, 1349, 99287)
    # each user's timestamps are non-decreasing
    within = np.ones(seqs.n_interactions, dtype=bool)
    within[seqs.offsets[:-1]] = False
    assert (np.diff(seqs.timestamps, prepend=0)[within] >= 0).all()
    # through the registry and the cache, without any download
    (tmp_path / "ml-100k").symlink_to(ml100k_dir, target_is_directory=True)
    config = build_data_options({"dataset_code": "ml-100k", "local_data_folder": str(tmp_path),
                                 "data_url": closed_port_url()})
    cached, _, _ = load_sequences(config)
    assert cached.stats()["interactions"] == 99287


def test_real_ml100k_matches_the_original_up_to_tie_order(ml100k_dir):
    """Same users, items and per-user multisets as the original's preprocessing; the sequences may
    differ only in the order of equal timestamps (the original sorted unstably). The reference
    data's README: the (validation, test) targets differ from a stable sort for 287 users."""
    original = SHARED_DATA / "ml-100k-original-order" / "ratings.csv"
    if not original.is_file():
        pytest.skip("original-order reference absent")
    ours = build_sequences(SOURCES["ml-100k"].reader(ml100k_dir / "u.data"))
    theirs = build_sequences(read_user_file(original), 0, 0, 3)    # already filtered
    assert np.array_equal(ours.user_ids, theirs.user_ids) and np.array_equal(ours.item_ids, theirs.item_ids)
    assert np.array_equal(ours.offsets, theirs.offsets) and np.array_equal(ours.timestamps, theirs.timestamps)
    targets_differ = 0
    for u in range(ours.n_users):
        a, b = ours.user_items(u), theirs.user_items(u)
        assert sorted(a.tolist()) == sorted(b.tolist())
        targets_differ += not np.array_equal(a[-2:], b[-2:])
    assert targets_differ == 287


# --- against a plain pandas re-statement of §1.2 ----------------------------------------------------

def reference_sequences(raw: RawInteractions, min_rating, min_sc, min_uc) -> dict:
    """§1.2 written the slow, obvious way: user -> list of (item, timestamp)."""
    import pandas as pd
    frame = pd.DataFrame({"user": raw.user, "item": raw.item, "ts": raw.timestamp,
                          "rating": raw.rating if raw.rating is not None else 0.0})
    frame = frame[frame["rating"] >= min_rating]
    if min_sc > 0:
        counts = frame["item"].value_counts()
        frame = frame[frame["item"].map(counts) >= min_sc]
    counts = frame["user"].value_counts()
    frame = frame[frame["user"].map(counts) >= min_uc]
    frame = frame.sort_values("ts", kind="stable")
    return {user: list(zip(group["item"].tolist(), group["ts"].tolist())) for user, group in frame.groupby("user", sort=True)}


@pytest.mark.parametrize("kind", ["small_ints", "negative_ints", "huge_ints", "strings", "huge_timestamps"])
def test_matches_a_plain_pandas_reference(kind):
    rng = np.random.default_rng(7)
    n, k = 3000, 400             # ~7 rows per user and many rare items: the thresholds bite
    pools = {"small_ints": np.arange(1, k + 1), "negative_ints": np.arange(-k // 2, k // 2),
             "huge_ints": rng.choice(10**15, k, replace=False), "strings": np.array([f"A{j:03d}" for j in range(k)]),
             "huge_timestamps": np.arange(1, k + 1)}
    users = pools[kind][rng.integers(0, k, n)]
    items = pools[kind][rng.zipf(1.4, n) % k]
    ts = rng.integers(0, 40, n) * (10**17 if kind == "huge_timestamps" else 1)
    raw = RawInteractions(users, items, ts, rng.integers(1, 6, n).astype(np.float64))
    for options in [(0, 5, 5), (3, 4, 3), (0, 0, 10)]:
        seqs = build_sequences(raw, *options)
        ours = {seqs.user_ids[u].item(): list(zip(seqs.item_ids[seqs.user_items(u) - 1].tolist(),
                                                  seqs.timestamps[seqs.offsets[u]:seqs.offsets[u + 1]].tolist()))
                for u in range(seqs.n_users)}
        expected = reference_sequences(raw, *options)
        assert list(ours) == list(expected)                     # same users, ascending
        assert ours == expected
        assert seqs.item_ids.tolist() == sorted({i for h in expected.values() for i, _ in h})
