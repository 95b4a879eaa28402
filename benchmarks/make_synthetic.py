"""Write a synthetic ratings file in MovieLens-20M's raw format, for the data benchmarks.

    python benchmarks/make_synthetic.py --preset ml-20m --out /tmp/synth
    esapr data stats --dataset_code ml-20m --local_data_folder /tmp/synth

The file is ``<out>/ml-20m/ratings.csv`` with the header ``userId,movieId,rating,timestamp``,
half-star ratings and unix-second timestamps, sorted by user then movie like the real file, so
it is read exactly like the real dataset (``--dataset_code ml-20m``) whatever the preset's size.

Shape (seeded, vectorised numpy; 20M rows in well under a minute):
* item popularity is Zipf-like (Zipf-Mandelbrot, p ~ (rank + r0)^-2) plus a tail of rare
  items with 1-4 ratings each (``rare_share`` of the items, as in the real data), which the item
  filter (min_sc) removes;
* user lengths are log-normal, at least 5, except ``short_share`` of users with 1-4 ratings that
  the user filter (min_uc) removes; a user rates each movie at most once;
* each user's timestamps fall in a log-normal session span; a tenth of the users rate within a
  few seconds, so equal timestamps (ties) are common, as in MovieLens.
Movie ids are a random sorted subset of 1..131262 (gaps, like the real ids), unrelated to popularity.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

# users, items (before filtering), rows, rare-item share (items with ~2 ratings)
PRESETS = {
    "ml-100k": dict(users=943, items=1_682, rows=100_000, rare_share=0.20),
    "ml-1m": dict(users=6_040, items=3_706, rows=1_000_209, rare_share=0.08),
    "ml-20m": dict(users=138_493, items=26_744, rows=20_000_263, rare_share=0.31),
}
RATINGS = np.arange(1, 11)      # half stars: 0.5 .. 5.0 as 1 .. 10
RATING_P = np.array([1.2, 3.3, 1.4, 7.2, 4.4, 21.4, 10.5, 27.7, 7.7, 14.5])
RATING_P = RATING_P / RATING_P.sum()  # about ML-20M's shares
FIRST_TS, LAST_TS = 789_652_009, 1_427_784_002                                  # ML-20M's range
MAX_MOVIE_ID = 131_262


class ZipfMandelbrot:
    """Item ranks 0..head-1 with p(r) = F(r+1) - F(r), F the CDF of the density ~ (x + r0)^-2 on
    [0, head): Zipf-like (exponent 2), sampled in closed form (inverse CDF, no search)."""

    def __init__(self, head: int, r0: float):
        self.head, self.r0 = head, r0
        self.lo, self.hi = 1.0 / r0, 1.0 / (head + r0)

    def cdf(self, x: np.ndarray) -> np.ndarray:
        return (self.lo - 1.0 / (x + self.r0)) / (self.lo - self.hi)

    def probabilities(self, n_items: int) -> np.ndarray:
        """p over all n_items (0 beyond ``head``: the rare items are placed separately)."""
        p = np.zeros(n_items)
        p[: self.head] = np.diff(self.cdf(np.arange(self.head + 1, dtype=np.float64)))
        return p

    def sample(self, rng, n: int) -> np.ndarray:
        x = rng.random(n)
        x *= self.hi - self.lo
        x += self.lo
        np.reciprocal(x, out=x)
        x -= self.r0
        return np.minimum(x.astype(np.int64), self.head - 1)


def rare_rows(rng, n_items: int, n_rare: int, n_users: int) -> np.ndarray:
    """Keys (user * n_items + item) of the rare items' ratings: each rare item gets 1-4 distinct users."""
    counts = rng.integers(1, 5, n_rare)
    keys = [user * n_items + (n_items - n_rare + r)
            for r, count in enumerate(counts.tolist())
            for user in rng.choice(n_users, count, replace=False).tolist()]
    return np.asarray(keys, dtype=np.int64)


def user_lengths(rng, n_users: int, rows: int, max_len: int, short_share: float = 0.01,
                 sigma: float = 1.1) -> np.ndarray:
    """Log-normal lengths >= 5 summing to ``rows`` (short users excepted), capped at ``max_len``."""
    lengths = np.zeros(n_users, dtype=np.int64)
    short = rng.random(n_users) < short_share
    lengths[short] = rng.integers(1, 5, short.sum())
    if rows < lengths.sum() + 5 * (~short).sum():
        raise ValueError(f"{rows} rows are too few for {n_users} users")
    long_users = np.flatnonzero(~short)
    budget = rows - lengths.sum() - 5 * len(long_users)
    x = rng.lognormal(0.0, sigma, len(long_users))
    extra = np.minimum(np.floor(x / x.sum() * budget).astype(np.int64), max_len - 5)
    lengths[long_users] = 5 + extra
    missing = rows - lengths.sum()
    while missing > 0:                                  # hand out the rounding remainder
        room = long_users[lengths[long_users] < max_len]
        pick = rng.choice(room, size=min(missing, len(room)), replace=False)
        lengths[pick] += 1
        missing = rows - lengths.sum()
    return lengths


def distinct_items(rng, lengths: np.ndarray, zipf: ZipfMandelbrot, n_items: int, oversample: float = 2.0,
                   dense_cells: int = 4_000_000, extra: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(user index, item rank) pairs, sorted by user then item: each user's ``lengths[u]`` items are
    distinct, drawn from ``p`` without replacement (successive sampling).

    Light users: draw with replacement and keep the first distinct draws. Heavy users, and the few
    light ones whose draws held too few distinct items: exponential races on a dense row (the
    ``L`` smallest E/p, E ~ Exp(1)), a chunk of users at a time. ``extra`` keys (user * n_items
    + item, of items with p = 0) are added as they are."""
    p = zipf.probabilities(n_items)
    heavy = lengths > max(5, n_items // 16)
    light = np.flatnonzero(~heavy & (lengths > 0))
    draws = np.ceil(lengths[light] * oversample).astype(np.int64) + 8
    keys = np.repeat(light, draws) * n_items
    keys += zipf.sample(rng, len(keys))
    order = np.argsort(keys, kind="stable")            # stable: equal keys stay in draw order
    sorted_keys = keys[order]
    first = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
    distinct_pos = np.sort(order[first])              # first draw of each distinct pair, in draw order
    del order, sorted_keys, first
    chosen = keys[distinct_pos]
    del keys, distinct_pos
    user_of = chosen // n_items
    starts = np.flatnonzero(np.r_[True, user_of[1:] != user_of[:-1]])
    rank = np.arange(len(chosen)) - np.repeat(starts, np.diff(np.r_[starts, len(chosen)]))
    keep = rank < lengths[user_of]
    chosen, user_of = chosen[keep], user_of[keep]
    short = np.bincount(user_of, minlength=len(lengths)) < lengths
    short[heavy] = False
    if short.any():                                   # redo these users on the dense path
        chosen = chosen[~short[user_of]]
    dense_users = np.flatnonzero(heavy | short)
    parts = [chosen]
    with np.errstate(divide="ignore"):
        inverse_p = 1.0 / p         # inf for p = 0: never picked
    step = max(1, dense_cells // n_items)
    for lo in range(0, len(dense_users), step):
        users = dense_users[lo: lo + step]
        need = lengths[users]
        race = rng.exponential(size=(len(users), n_items))
        race *= inverse_p
        k = int(need.max())
        top = np.argpartition(race, k - 1, axis=1)[:, :k] if k < n_items else np.tile(np.arange(n_items), (len(users), 1))
        mask = np.argsort(np.take_along_axis(race, top, axis=1), axis=1) < need[:, None]  # the need smallest
        parts.append((users[:, None] * n_items + top)[mask])
    if extra is not None:
        parts.append(extra)
    keys = np.sort(np.concatenate(parts))
    return keys // n_items, keys % n_items


_GROUPS = np.array([list(f"{i:04d}".encode()) for i in range(10000)], dtype=np.uint8)   # "0000".."9999"


def _digit_block(values: np.ndarray, width: int) -> np.ndarray:
    """[n, width] ASCII digits of ``values``, right-aligned, leading positions NUL (dropped later);
    four digits per table lookup."""
    groups = -(-width // 4)
    parts, v = [], values
    for _ in range(groups):
        parts.append(_GROUPS[v % 10000])
        v = v // 10000
    block = np.concatenate(parts[::-1], axis=1)[:, groups * 4 - width:]
    present = values[:, None] >= 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    present[:, -1] = True                               # 0 prints as '0'
    block *= present
    return block


def format_csv(user: np.ndarray, item: np.ndarray, rating2: np.ndarray, ts: np.ndarray) -> bytes:
    """``user,item,r.r,ts\n`` lines, vectorised: fixed-width fields padded with NUL bytes, which
    are then dropped (no per-row Python). Best on chunks of ~100k rows (cache-sized)."""
    def width(v):
        return len(str(int(v.max()))) if len(v) else 1
    out = np.empty((len(user), width(user) + width(item) + width(ts) + 7), np.uint8)
    col = 0
    for values in (user, item):
        w = width(values)
        out[:, col: col + w] = _digit_block(values, w)
        out[:, col + w] = ord(",")
        col += w + 1
    out[:, col] = 48 + rating2 // 2
    out[:, col + 1] = ord(".")
    out[:, col + 2] = np.where(rating2 % 2 == 1, ord("5"), ord("0"))
    out[:, col + 3] = ord(",")
    col += 4
    w = width(ts)
    out[:, col: col + w] = _digit_block(ts, w)
    out[:, col + w] = ord("\n")
    flat = out.ravel()
    return flat[flat != 0].tobytes()


def make(preset: str, out: Path, seed: int = 0, rows: int | None = None, chunk: int = 200_000) -> dict:
    spec = dict(PRESETS[preset])
    if rows is not None:           # scale users and items with the requested size
        factor = rows / spec["rows"]
        spec.update(rows=rows, users=max(10, int(spec["users"] * factor)),
                    items=max(50, int(spec["items"] * factor ** 0.5)))
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    n_users, n_items, n_rows = spec["users"], spec["items"], spec["rows"]
    n_rare = int(round(spec["rare_share"] * n_items))
    rare = rare_rows(rng, n_items, n_rare, n_users)
    zipf = ZipfMandelbrot(n_items - n_rare, r0=max(1.0, 0.0084 * n_items))
    lengths = user_lengths(rng, n_users, n_rows - len(rare), max_len=max(5, (n_items - n_rare) // 4))
    user_index, item_rank = distinct_items(rng, lengths, zipf, n_items, extra=rare)
    movie_ids = np.sort(rng.choice(np.arange(1, max(MAX_MOVIE_ID, n_items) + 1), n_items, replace=False))
    movie_of_rank = rng.permutation(movie_ids)        # popularity unrelated to the id
    # timestamps: each user's session span; 10% of users rate within a few seconds (ties)
    span = np.exp(rng.normal(np.log(30 * 86400), 2.0, n_users)).astype(np.int64).clip(60, LAST_TS - FIRST_TS)
    burst = rng.random(n_users) < 0.10
    span[burst] = np.maximum(1, lengths[burst] // 4)
    first = FIRST_TS + (rng.random(n_users) * (LAST_TS - FIRST_TS - span)).astype(np.int64)
    generated = time.perf_counter()
    path = Path(out) / "ml-20m" / "ratings.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = len(user_index)
    with open(tmp, "wb") as handle:
        handle.write(b"userId,movieId,rating,timestamp\n")
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            users = user_index[lo:hi]
            ts = first[users] + (rng.random(hi - lo) * (span[users] + 1)).astype(np.int64)
            rating2 = rng.choice(RATINGS, size=hi - lo, p=RATING_P)
            handle.write(format_csv(users + 1, movie_of_rank[item_rank[lo:hi]], rating2, ts))
    tmp.replace(path)
    done = time.perf_counter()
    return {"what": "make_synthetic", "preset": preset, "path": str(path), "users": int(n_users),
            "items": int(n_items), "rows": int(n), "bytes": path.stat().st_size,
            "generate_s": round(generated - start, 2), "write_s": round(done - generated, 2),
            "seconds": round(done - start, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="ml-20m")
    parser.add_argument("--out", type=Path, required=True, help="folder; the file is OUT/ml-20m/ratings.csv")
    parser.add_argument("--rows", type=int, default=None, help="override the preset's number of rows")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(make(args.preset, args.out, args.seed, args.rows)))


if __name__ == "__main__":
    main()
