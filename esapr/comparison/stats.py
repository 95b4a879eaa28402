"""The statistics of a comparison, on per-user values ``[seeds, users]`` (pure numpy and scipy):
a bootstrap interval over test users and seeds, and a paired test of every model against the
best one (two-sided Wilcoxon signed-rank on the per-user values averaged over seeds, Holm-
corrected across models)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

ALPHA = 0.05
N_BOOTSTRAP = 2000


def bootstrap_interval(values: np.ndarray, level: float = 0.95, n_boot: int = N_BOOTSTRAP,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean of ``values[seeds, users]``, resampling test users and
    seeds (both with replacement), so it holds both the test-set and the training noise."""
    low, high = bootstrap_intervals(np.atleast_2d(np.asarray(values, dtype=float))[None], level, n_boot, seed)
    return float(low[0]), float(high[0])


def bootstrap_intervals(values: np.ndarray, level: float = 0.95, n_boot: int = N_BOOTSTRAP,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``bootstrap_interval`` of each ``values[k]`` (``[metrics, seeds, users]``), all from the
    same resamples. A resample is a matrix of counts (how often each user, each seed is drawn)
    applied as one matrix product per chunk of resamples: no loop over users or metrics."""
    x = np.asarray(values, dtype=float)
    n_metrics, n_seeds, n_users = x.shape
    flat = x.reshape(n_metrics * n_seeds, n_users).T                                   # [U, K*S]
    seed_rng = np.random.default_rng([seed, 1])
    stats = []
    for users in _user_resamples(n_users, n_boot, seed):                                # [b, U] counts
        seeds = _counts(seed_rng, n_seeds, len(users))                                  # [b, S] counts
        per_seed = (users @ flat / n_users).reshape(len(users), n_metrics, n_seeds)     # [b, K, S]
        stats.append(np.einsum("bks,bs->bk", per_seed, seeds) / n_seeds)
    low, high = np.percentile(np.concatenate(stats), [50 * (1 - level), 50 * (1 + level)], axis=0)
    return low, high


def _counts(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``size`` resamples of n items with replacement, as counts ``[size, n]`` (float32)."""
    drawn = rng.integers(0, n, size=(size, n)) + (np.arange(size) * n)[:, None]
    return np.bincount(drawn.ravel(), minlength=size * n).reshape(size, n).astype(np.float32)


_RESAMPLES: dict[tuple, list[np.ndarray]] = {}


def _user_resamples(n_users: int, n_boot: int, seed: int) -> list[np.ndarray]:
    """The user resamples in chunks of about 4M counts; kept for the next metric and model (the
    same draws for all: their intervals are comparable) when they fit in about 100 MB."""
    key = (n_users, n_boot, seed)
    if key in _RESAMPLES:
        return _RESAMPLES[key]
    rng = np.random.default_rng([seed, 0])
    chunk = max(1, min(n_boot, 4_000_000 // max(1, n_users)))
    chunks = [_counts(rng, n_users, min(chunk, n_boot - start)) for start in range(0, n_boot, chunk)]
    if n_users * n_boot <= 25_000_000:
        _RESAMPLES.clear()
        _RESAMPLES[key] = chunks
    return chunks


def paired_p_value(best: np.ndarray, other: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank test on paired per-user values (scipy); 1.0 when every pair
    is equal (nothing tells them apart)."""
    from scipy.stats import wilcoxon
    difference = np.asarray(best, dtype=float) - np.asarray(other, dtype=float)
    if not np.any(difference != 0):
        return 1.0
    return float(wilcoxon(difference, zero_method="wilcox", alternative="two-sided").pvalue)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment: the i-th smallest p times (m - i), made monotone, capped at 1."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]))
    out = np.empty_like(p)
    out[order] = adjusted
    return out


@dataclass(frozen=True)
class MetricStats:
    """One model on one metric: the table's cell and its significance mark."""
    model: str
    mean: float
    std: float
    ci_low: float
    ci_high: float
    seeds: int
    p_value: float        # paired test against the best model (nan for the best itself)
    p_holm: float
    mark: str             # best | tied (not significantly worse) | worse


def compare_models(values: dict[str, np.ndarray], alpha: float = ALPHA, n_boot: int = N_BOOTSTRAP,
                   seed: int = 0, intervals: dict[str, tuple[float, float]] | None = None) -> list[MetricStats]:
    """``values[model]`` = per-user values ``[seeds, users]`` of one metric (users aligned across
    models). The best model has the highest mean; every other one is tested against it on the
    per-user values averaged over its seeds, Holm-corrected across the models. ``intervals``:
    the bootstrap intervals when already computed (``bootstrap_intervals`` of many metrics)."""
    models = list(values)
    arrays = {m: np.atleast_2d(np.asarray(values[m], dtype=float)) for m in models}
    means = {m: float(a.mean()) for m, a in arrays.items()}
    best = max(models, key=lambda m: means[m])
    others = [m for m in models if m != best]
    per_user = {m: a.mean(axis=0) for m, a in arrays.items()}
    raw = [paired_p_value(per_user[best], per_user[m]) for m in others]
    adjusted = dict(zip(others, holm(raw))) if others else {}
    raw = dict(zip(others, raw))
    out = []
    for m in models:
        a = arrays[m]
        low, high = intervals[m] if intervals else bootstrap_interval(a, n_boot=n_boot, seed=seed)
        seed_means = a.mean(axis=1)
        std = float(seed_means.std(ddof=1)) if len(seed_means) > 1 else float("nan")
        if m == best:
            mark, p, ph = "best", float("nan"), float("nan")
        else:
            p, ph = raw[m], float(adjusted[m])
            mark = "tied" if ph >= alpha else "worse"
        out.append(MetricStats(m, means[m], std, low, high, len(seed_means), p, ph, mark))
    return out
