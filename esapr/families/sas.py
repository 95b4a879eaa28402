"""SASRec: a causal transformer trained on the next item at every position."""
from __future__ import annotations

from dataclasses import dataclass

from esapr.families.base import TRANSFORMER_SPACE, Family, NegativePool, TransformerOptions, check_heads, check_pool
from esapr.options.spec import Range, option


@dataclass
class SasOptions(TransformerOptions, NegativePool):
    loss: str = option("bce", "training loss at every labelled position: bce (the original: against one negative "
                              "from the user's pool), ce (softmax over every item), sampled_ce (softmax over the "
                              "next item and num_negatives uniform items shared by the batch)",
                       ("bce", "ce", "sampled_ce"))
    num_negatives: int = option(256, "sampled_ce: items drawn uniformly (with replacement) per batch",
                                valid=Range(1, 10**6))


def check(options: SasOptions) -> None:
    if options.loss == "bce":
        check_pool(options, "sas")
    check_heads(options, options.num_heads, "num_heads")


TINY = {"max_len": 10, "train_window": 2, "train_batch_size": 40, "val_batch_size": 50, "test_batch_size": 50,
        "hidden_units": 16, "num_heads": 2, "num_blocks": 1, "test_negative_sample_size": 20,
        "train_negative_sample_size": 20}
SPACE = TRANSFORMER_SPACE
FAMILY = Family("sas", "SASRec", SasOptions, "esapr.models.sasrec:SASRec", "esapr.data.batches.sas:SasBatches",
                "SequenceBatch", TINY, check, space=SPACE)
