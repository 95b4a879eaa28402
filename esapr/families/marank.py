"""MARank: multi-order attentive ranking over a user and the items before the target."""
from __future__ import annotations

from dataclasses import dataclass

from esapr.families.base import TRAINING_SPACE, Choice, EmbeddingOptions, Family, Floats, Ints, NegativePool, check_pool
from esapr.options.spec import AT_LEAST_0, Range, option


@dataclass
class MarankOptions(EmbeddingOptions, NegativePool):
    marank_max_len: int = option(6, "context length (items before the target)", valid=Range(1, 10**5))
    marank_num_att_layers: int = option(2, "attention layers", valid=AT_LEAST_0)
    marank_num_linear_layers: int = option(2, "residual layers", valid=AT_LEAST_0)


def check(options: MarankOptions) -> None:
    check_pool(options, "marank")


TINY = {"max_len": 10, "train_window": 2, "train_batch_size": 40, "val_batch_size": 50, "test_batch_size": 50,
        "hidden_units": 16, "test_negative_sample_size": 20, "train_negative_sample_size": 20}
SPACE = {**TRAINING_SPACE, "dropout": Floats(0.0, 0.5), "hidden_units": Choice(32, 64, 128),
         "marank_max_len": Ints(2, 10), "marank_num_att_layers": Ints(1, 3), "marank_num_linear_layers": Ints(1, 3)}
FAMILY = Family("marank", "MARank", MarankOptions, "esapr.models.marank:MARank", "esapr.data.batches.sas:MarankBatches",
                "SequenceBatch", TINY, check, space=SPACE)
