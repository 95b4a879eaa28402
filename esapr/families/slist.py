"""SLIST: closed-form item-item weights that rebuild a recency-weighted history (session part)
and predict the next item from it (transition part)."""
from __future__ import annotations

from dataclasses import dataclass

from esapr.families.base import Family, Floats, Ints, RecencyWeights, WindowOptions
from esapr.options.spec import POSITIVE, PROBABILITY, option, require


@dataclass
class SlistOptions(WindowOptions, RecencyWeights):
    slist_lambdas: list[float] = option([10.0, 50.0, 200.0, 1000.0], "L2 regularisers, each fitted with every alpha "
                                        "and validated; the best setting is tested", valid=POSITIVE)
    slist_alphas: list[float] = option([0.2, 0.5, 0.8], "weight of the session part against the transition part "
                                       "(1: weighted EASE)", valid=PROBABILITY)


def check(options: SlistOptions) -> None:
    for name in ("slist_lambdas", "slist_alphas"):
        require(len(getattr(options, name)) >= 1, name, getattr(options, name), "give at least one value")
    require(options.max_len >= 2, "max_len", options.max_len, "SLIST needs at least 2 (a history item and a target)")


TINY = {"max_len": 10, "val_batch_size": 50, "test_batch_size": 50, "test_negative_sample_size": 20,
        "slist_lambdas": [10.0, 100.0], "slist_alphas": [0.5, 1.0]}
# a search trial fits a grid of one setting: slist_lambdas [lambda] x slist_alphas [alpha]
SPACE = {"slist_lambdas": Floats(1.0, 5_000.0, log=True), "slist_alphas": Floats(0.0, 1.0),
         "max_len": Ints(4, 128, log=True)}
FAMILY = Family("slist", "SLIST", SlistOptions, "esapr.models.slist:SLIST",
                "esapr.data.batches.history:RecentHistoryBatches", "HistoryBatch", TINY, check, trained=False,
                space=SPACE)
