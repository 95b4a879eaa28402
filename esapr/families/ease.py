"""EASE: closed-form item-item weights from each user's binary training history."""
from __future__ import annotations

from dataclasses import dataclass

from esapr.families.base import Family, Floats, ModelOptions
from esapr.options.spec import POSITIVE, option, require


@dataclass
class EaseOptions(ModelOptions):
    ease_lambdas: list[float] = option([20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0],
                                       "L2 regularisers, each fitted and validated; the best is tested", valid=POSITIVE)


def check(options: EaseOptions) -> None:
    require(len(options.ease_lambdas) >= 1, "ease_lambdas", options.ease_lambdas, "give at least one value")


TINY = {"val_batch_size": 50, "test_batch_size": 50, "test_negative_sample_size": 20, "ease_lambdas": [10.0, 100.0]}
# a search trial fits a grid of one setting: ease_lambdas [the lambda drawn]
SPACE = {"ease_lambdas": Floats(1.0, 10_000.0, log=True)}
FAMILY = Family("ease", "EASE", EaseOptions, "esapr.models.ease:EASE", "esapr.data.batches.history:HistoryBatches",
                "HistoryBatch", TINY, check, trained=False, space=SPACE)
