"""The one metric table. Every metric is a per-user value computed from the 0-based rank of
the user's answer (one positive per user), so a metric is one entry here: its name, its
per-user function and whether it takes a cut-off k. The trainer computes them on the device
(torch), compare and results from the saved ranks (numpy): the functions take the array module.

Names: ``NDCG@10`` (sampled protocol: the answer against its negatives), ``full_NDCG@10`` (full
ranking: against every item the user has not seen). Order: the table's, each by ascending k,
sampled before full. A rank of -1 means "not computed" (full ranking off).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from esapr.errors import UserError

FULL = "full_"


@dataclass(frozen=True)
class Metric:
    name: str
    per_user: Callable        # (ranks as float64, k or None, array module) -> per-user values
    cut_off: bool = True      # written NAME@k


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("NDCG", lambda r, k, xp: xp.where(r < k, 1.0 / xp.log2(r + 2.0), 0.0)),
    Metric("Recall", lambda r, k, xp: (r < k) * 1.0),          # = HR@k with one positive
    Metric("MRR", lambda r, k, xp: 1.0 / (r + 1.0), cut_off=False),
)}


def metric_names(ks, full_ranking: bool = True) -> list[str]:
    """Every metric a run reports: each metric of the table at each cut-off, sampled then full."""
    ks = sorted(set(int(k) for k in ks))
    names = [f"{m.name}@{k}" if m.cut_off else m.name for m in METRICS.values() for k in (ks if m.cut_off else [0])]
    return names + [FULL + name for name in names] if full_ranking else names


def parse(name: str) -> tuple[Metric, int | None, bool]:
    """``full_NDCG@10`` -> (NDCG, 10, True); an unknown name is a UserError."""
    full = name.startswith(FULL)
    base, _, k = name.removeprefix(FULL).partition("@")
    metric = METRICS.get(base)
    if metric is None or metric.cut_off != bool(k) or (k and not (k.isascii() and k.isdigit() and int(k) > 0)):
        known = ", ".join(f"{m.name}@k" if m.cut_off else m.name for m in METRICS.values())
        raise UserError(f"unknown metric '{name}'; metrics are {known}, with the prefix {FULL} for full ranking")
    return metric, int(k) if k else None, full


def per_user(ranks, name: str, xp=None):
    """Each user's value of metric ``name`` from 0-based ranks (numpy by default)."""
    if xp is None:
        import numpy as xp
    metric, k, _ = parse(name)
    return metric.per_user(ranks * 1.0 if xp.__name__ == "numpy" else ranks, k, xp)


def is_metric(name: str) -> bool:
    """Whether ``name`` is a metric of the table (a log's other columns are settings or epochs)."""
    return sort_key(name)[0] < 2


def sort_key(name: str) -> tuple:
    """Display order: sampled before full, the table's order, ascending k; other names last."""
    try:
        metric, k, full = parse(name)
    except UserError:
        return 2, len(METRICS), 0, name
    return int(full), list(METRICS).index(metric.name), k or 0, name
