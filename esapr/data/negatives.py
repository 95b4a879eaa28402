"""Random / popular negative samplers (docs/original.md §2, §9.1 item 1): vectorised, seeded, cached.

``sample_negatives`` returns an ``[n_users, size]`` int32 array of dense item ids (1..n_items);
row u belongs to user row u. Each row excludes every item the user ever interacted with (the
full sequence, validation and test items included) and holds no duplicates.

* ``random``: uniform over the items; ``popular``: probability proportional to the item's count
  over ALL interactions (validation and test items included, as in the original).
* Fast path (default): successive sampling without replacement, the same distribution as numpy's
  ``choice(replace=False, p=p)``, with one ``np.random.default_rng(seed)`` stream and no per-user
  Python loop. Users are processed in chunks of consecutive rows; for each chunk, rounds of
  candidates are drawn for all unfinished users at once from the base distribution (an exact
  integer alias table), and a candidate is kept if the user has not seen it and it is the first
  occurrence of that item for the user in draw order (an int32 "mark" block per chunk, updated
  with ``np.minimum.at``). Users whose acceptance rate or pool is too small for rejection to pay
  off (or still unfinished after a few rounds) continue with exponential races (the smallest
  E/w, E ~ Exp(1), over a dense row), which is the same successive sampling.
  ML-20M size (138k users, 27k items, 20M interactions, 100 popular negatives): about 4 s of CPU.
* Legacy path (``legacy=True``): the original's per-user ``RandomState(seed).choice`` loop, which
  reproduces the original's negatives exactly when the dense item ids agree.

Short pools: when a user has fewer unseen items (with p > 0) than ``size``, the row holds ALL of
the user's unseen items (in sampled order) followed by repeats drawn with replacement from the
same unseen pool (probability p); one warning names how many users were short. A user with no
unseen item at all is a UserError. (The original crashes in both cases.)
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from esapr.errors import UserError
from esapr.files import atomic_write

CODES = ("random", "popular")
_EMPTY = np.iinfo(np.int32).max
_SEEN = -1
_MARK_CELLS = 8_000_000      # cells of the [users, n_items + 1] int32 mark block of one chunk
_MIN_CHUNK_USERS = 64
_DENSE_BUDGET = 2_000_000    # cells of a dense [users, n_items] float block
_MAX_ROUNDS = 12


def cache_name(code: str, size: int, seed: int, legacy: bool = False) -> str:
    return f"negatives-{code}-size{size}-seed{seed}{'-legacy' if legacy else ''}.npy"


def item_weights(sequences, code: str) -> np.ndarray:
    """Integer sampling weights of items 1..n_items (index i-1): counts for popular, ones for random."""
    if code == "popular":
        return np.bincount(sequences.items, minlength=sequences.n_items + 1)[1:].astype(np.int64)
    if code == "random":
        return np.ones(sequences.n_items, dtype=np.int64)
    raise UserError(f"unknown negative sampler code '{code}'; choose one of {', '.join(CODES)}")


def sample_negatives(sequences, code: str, size: int, seed: int, legacy: bool = False) -> np.ndarray:
    """``[n_users, size]`` int32 dense item ids; see the module docstring for the policy."""
    weights = item_weights(sequences, code)
    size = int(size)
    if size < 0:
        raise UserError(f"negative sample size must be >= 0, got {size}")
    if size == 0 or sequences.n_users == 0:
        return np.zeros((sequences.n_users, size), dtype=np.int32)
    marks = _Marks(sequences, weights)
    available = marks.available
    if (available == 0).any():
        users = np.flatnonzero(available == 0)
        raise UserError(f"{len(users)} users (e.g. user {sequences.user_ids[users[0]]}) interacted with every "
                        f"item that can be sampled, so no {code} negative can be drawn for them; "
                        f"remove them or use a larger dataset")
    short = available < size
    if short.any():
        warnings.warn(f"negative sample size {size} exceeds the unseen items of {int(short.sum())} users "
                      f"(fewest: {int(available[short].min())}); their rows repeat items", stacklevel=2)
    if legacy:
        return _legacy(sequences, code, weights, size, seed)
    return _fast(marks, weights, size, seed)


# --- seen sets -----------------------------------------------------------------------------------

class _Marks:
    """Users are processed in chunks of consecutive rows. ``mark`` is one reusable int32 block
    [chunk users, n_items + 1]: _EMPTY, _SEEN for the user's items, or the draw index of an item
    taken for the row. Only touched cells are reset, so nothing O(users x items) is ever scanned."""

    def __init__(self, sequences, weights: np.ndarray):
        self.offsets, self.items = sequences.offsets, sequences.items
        self.n_users, self.n_items, self.stride = sequences.n_users, sequences.n_items, sequences.n_items + 1
        self.chunk = max(_MIN_CHUNK_USERS, _MARK_CELLS // self.stride)
        self.mark = np.full(min(self.chunk, max(1, self.n_users)) * self.stride, _EMPTY, dtype=np.int32)
        # per-user distinct seen items (with weight > 0) and their weight
        self.seen_weight = np.zeros(self.n_users, dtype=np.float64)
        seen_positive = np.zeros(self.n_users, dtype=np.int64)
        for lo, hi in self.chunks():
            local, first = self.mark_seen(lo, hi)
            rows = local[first] // self.stride
            w = weights[local[first] - rows * self.stride - 1]
            self.seen_weight[lo:hi] = np.bincount(rows, weights=w, minlength=hi - lo)
            seen_positive[lo:hi] = np.bincount(rows, weights=w > 0, minlength=hi - lo)
            self.mark[local] = _EMPTY
        self.available = int((weights > 0).sum()) - seen_positive

    def chunks(self):
        for lo in range(0, self.n_users, self.chunk):
            yield lo, min(self.n_users, lo + self.chunk)

    def mark_seen(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Mark rows lo..hi-1's items _SEEN; return their cells and which are first occurrences."""
        a, b = self.offsets[lo], self.offsets[hi]
        rows = np.repeat(np.arange(hi - lo, dtype=np.int64), np.diff(self.offsets[lo: hi + 1]))
        local = rows * self.stride + self.items[a:b]
        position = np.arange(b - a, dtype=np.int32)
        np.minimum.at(self.mark, local, position)
        first = self.mark[local] == position
        self.mark[local] = _SEEN
        return local, first


# --- fast path -----------------------------------------------------------------------------------

class _Alias:
    """Walker/Vose alias table in exact integer arithmetic: item i (0-based) has probability
    weights[i] / weights.sum(). A draw is one uniform column j and one uniform r < total: j if
    r < threshold[j], else alias[j] (two table look-ups instead of a binary search)."""

    def __init__(self, weights: np.ndarray):
        n = len(weights)
        self.n, self.total = n, int(weights.sum())
        scaled = (weights.astype(np.int64) * n).tolist()   # bucket capacity: total
        threshold, alias = [self.total] * n, list(range(n))
        small = [i for i in range(n) if scaled[i] < self.total]
        large = [i for i in range(n) if scaled[i] >= self.total]
        total = self.total
        while small and large:
            s, g = small.pop(), large[-1]
            threshold[s], alias[s] = scaled[s], g
            scaled[g] -= total - scaled[s]
            if scaled[g] < total:
                small.append(large.pop())
        self.dtype = np.int32 if max(n, self.total) < 2**31 else np.int64
        self.threshold = np.asarray(threshold, dtype=self.dtype)
        self.alias = np.asarray(alias, dtype=self.dtype)
        self.uniform = bool((self.threshold == self.total).all())

    def draw(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """``count`` 0-based item indices."""
        column = rng.integers(0, self.n, count, dtype=self.dtype)
        if self.uniform:
            return column
        r = rng.integers(0, self.total, count, dtype=self.dtype)
        return np.where(r < self.threshold[column], column, self.alias[column])


def _fast(marks: _Marks, weights: np.ndarray, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n_items = marks.n_items
    out = np.zeros((marks.n_users, size), dtype=np.int32)
    table = _Alias(weights)
    total = table.total
    unseen_share = np.maximum(total - marks.seen_weight, 0.0) / total
    # Rejection costs about size / acceptance draws per user; a dense row costs n_items cells.
    # Users with a small pool relative to size (many duplicate rejections), a tiny acceptance,
    # or too few unseen items at all take the dense path.
    expected = _draws_for(size, unseen_share)
    dense = (marks.available < 2 * size) | (expected > n_items / 2)
    per_block = max(1, _DENSE_BUDGET // max(1, n_items))
    for lo, hi in marks.chunks():
        seen_cells, _ = marks.mark_seen(lo, hi)
        filled = np.zeros(hi - lo, dtype=np.int64)
        sparse = np.flatnonzero(~dense[lo:hi])
        slow = _rejection(marks, weights, table, unseen_share[lo:hi], lo, sparse, size, rng, out, filled)
        rest = np.sort(np.concatenate([np.flatnonzero(dense[lo:hi]), slow]))
        for start in range(0, len(rest), per_block):
            _dense(marks, weights, lo, rest[start: start + per_block], size, rng, out, filled)
        marks.mark[seen_cells] = _EMPTY
        marks.mark[(np.arange(hi - lo)[:, None] * marks.stride + out[lo:hi]).ravel()] = _EMPTY
    return out


def _draws_for(need, share: np.ndarray) -> np.ndarray:
    """Draws that give ``need`` acceptances at acceptance rate ``share`` in most cases: the mean
    of the negative binomial plus 2.5 standard deviations (the rest take another round)."""
    share = np.clip(share, 1e-12, 1.0)
    return np.ceil((need + 2.5 * np.sqrt(need * (1 - share))) / share) + 2


def _rejection(marks: _Marks, weights: np.ndarray, table: _Alias, unseen_share: np.ndarray,
               lo: int, active: np.ndarray, size: int, rng: np.random.Generator, out: np.ndarray,
               filled: np.ndarray) -> np.ndarray:
    """Fill rows ``lo + active`` of ``out`` by rounds of draws from the base distribution,
    rejecting seen items and items already taken (the first occurrence in draw order wins).
    Returns the local rows still unfinished; their prefix ``out[.., :filled]`` stays, and as
    successive sampling is memoryless the dense path continues it exactly."""
    stride, mark = marks.stride, marks.mark
    share = unseen_share.copy()                  # unseen mass not yet taken, as a share of total
    slow = [np.zeros(0, dtype=np.int64)]
    active = active.astype(np.int32 if len(mark) < 2**31 else np.int64)
    counter = 0                                  # draw index within the chunk
    for _ in range(_MAX_ROUNDS):
        if len(active) == 0:
            break
        draws = _draws_for(size - filled[active], share[active])
        too_many = draws > marks.n_items         # a dense row is cheaper now: leave them to it
        if too_many.any():
            slow.append(active[too_many])
            active, draws = active[~too_many], draws[~too_many]
            if len(active) == 0:
                break
        owner = np.repeat(active, draws.astype(np.int64))        # local row of each draw, grouped
        items = table.draw(rng, len(owner)) + 1
        cells = owner * stride + items                          # < len(mark): int32 fits
        index = np.arange(counter, counter + len(owner), dtype=np.int32)
        counter += len(owner)
        np.minimum.at(mark, cells, index)       # seen (-1) and earlier takes keep their mark
        accepted = np.flatnonzero(mark[cells] == index)
        who = owner[accepted]
        # rank of each accepted draw within its row's draws (who is grouped and ascending)
        count = np.bincount(who, minlength=len(filled))
        rank = np.arange(len(who)) - (np.cumsum(count) - count)[who]
        keep = rank < (size - filled[who])
        mark[cells[accepted[~keep]]] = _EMPTY    # drawn beyond the need: not taken
        who, rank, taken = who[keep], rank[keep], items[accepted[keep]]
        out[lo + who, filled[who] + rank] = taken
        share -= np.bincount(who, weights=weights[taken - 1], minlength=len(share)) / table.total
        filled += np.minimum(count, size - filled)
        active = active[filled[active] < size]
    return np.concatenate(slow + [active])


def _dense(marks: _Marks, weights: np.ndarray, lo: int, rows: np.ndarray, size: int,
           rng: np.random.Generator, out: np.ndarray, filled: np.ndarray) -> None:
    """Exponential races on dense rows: the items in ascending order of E / w (E ~ Exp(1); seen
    items, items already in the row's prefix and w = 0 excluded) are a successive sample without
    replacement, so they continue the prefix ``out[u, :filled[u]]`` exactly. Short pools are
    completed with draws with replacement from the user's unseen items."""
    n, n_items = len(rows), marks.n_items
    start = filled[rows]
    mask = (marks.mark.reshape(-1, marks.stride)[rows, 1:] != _EMPTY) | (weights <= 0)
    with np.errstate(divide="ignore"):
        race = rng.standard_exponential((n, n_items)) / weights
    race[mask] = np.inf
    if size < n_items:
        top = np.argpartition(race, size - 1, axis=1)[:, :size]
    else:
        top = np.broadcast_to(np.arange(n_items), (n, n_items)).copy()
    order = np.argsort(np.take_along_axis(race, top, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1) + 1
    if top.shape[1] < size:                     # size > n_items: every row is short, see below
        top = np.pad(top, ((0, 0), (0, size - top.shape[1])))
    # row r continues at column start[r] with its best size - start[r] items
    local, col = np.nonzero(np.arange(size) >= start[:, None])
    block = out[lo + rows]
    block[local, col] = top[local, col - start[local]]
    available = marks.available[lo + rows]
    short = np.flatnonzero(available < size)
    if len(short):
        # the slots past the unseen pool: with replacement, exact integer inverse CDF over the
        # flattened masked weights of the short rows
        masked = np.where(mask[short], 0, weights).astype(np.int64)
        flat = np.cumsum(masked.ravel())
        row_total = masked.sum(axis=1)
        row_base = flat[np.arange(len(short)) * n_items + n_items - 1] - row_total
        local, col = np.nonzero(np.arange(size) >= available[short, None])
        target = row_base[local] + rng.integers(0, row_total[local])
        block[short[local], col] = np.searchsorted(flat, target, side="right") - local * n_items + 1
    out[lo + rows] = block
    filled[rows] = size


# --- legacy path ---------------------------------------------------------------------------------

def _legacy(sequences, code: str, weights: np.ndarray, size: int, seed: int) -> np.ndarray:
    """The original's loop (docs/original.md §2): one RandomState, users in row order; p = base
    distribution (popular: count / total in float64; random: ones / n_items), the user's items
    zeroed, p / p.sum(), ``choice(items, size, replace=False, p=p)``. Short pools (where the
    original crashes) take all unseen items, then ``choice(..., replace=True, p=p)`` repeats."""
    rs = np.random.RandomState(seed)
    items = np.arange(sequences.n_items, dtype=np.int64) + 1
    if code == "popular":
        base = weights / weights.sum()          # int64 / int64 -> float64, == Python's count / total
    else:
        ones = np.ones_like(items)
        base = ones / ones.sum()
    out = np.zeros((sequences.n_users, size), dtype=np.int32)
    offsets = sequences.offsets
    for user in range(sequences.n_users):
        p = base.copy()
        p[sequences.items[offsets[user]: offsets[user + 1]].astype(np.int64) - 1] = 0.0
        p = p / p.sum()
        nonzero = int(np.count_nonzero(p))
        if nonzero >= size:
            out[user] = rs.choice(items, size, replace=False, p=p)
        else:
            out[user, :nonzero] = rs.choice(items, nonzero, replace=False, p=p)
            out[user, nonzero:] = rs.choice(items, size - nonzero, replace=True, p=p)
    return out


# --- cache ---------------------------------------------------------------------------------------

def cached_negatives(sequences, folder: Path, code: str, size: int, seed: int, legacy: bool = False) -> np.ndarray:
    """``sample_negatives`` cached as ``folder/negatives-<code>-size<n>-seed<s>[-legacy].npy``.
    The file is written atomically; a damaged or mismatched file is regenerated."""
    if code not in CODES:
        raise UserError(f"unknown negative sampler code '{code}'; choose one of {', '.join(CODES)}")
    if int(size) == 0:
        return np.zeros((sequences.n_users, 0), dtype=np.int32)
    folder = Path(folder)
    path = folder / cache_name(code, size, seed, legacy)
    if path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
            if (cached.dtype == np.int32 and cached.shape == (sequences.n_users, size)
                    and (cached.size == 0 or (cached.min() >= 1 and cached.max() <= sequences.n_items))):
                return cached
        except (OSError, ValueError, EOFError):
            pass
        path.unlink(missing_ok=True)  # damaged or stale: regenerate
    negatives = sample_negatives(sequences, code, size, seed, legacy=legacy)
    atomic_write(path, lambda handle: np.save(handle, negatives, allow_pickle=False))
    return negatives
