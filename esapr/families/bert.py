"""BERT4Rec: a bidirectional transformer trained to predict masked items."""
from __future__ import annotations

from dataclasses import dataclass

from esapr.families.base import TRANSFORMER_SPACE, Family, Floats, MaskedOptions, check_heads, check_masked


@dataclass
class BertOptions(MaskedOptions):
    pass


def check(options: BertOptions) -> None:
    check_masked(options)
    check_heads(options, options.num_heads, "num_heads")


TINY = {"max_len": 10, "train_window": 2, "train_batch_size": 40, "val_batch_size": 50, "test_batch_size": 50,
        "hidden_units": 16, "num_heads": 2, "num_blocks": 1, "test_negative_sample_size": 20}
SPACE = {**TRANSFORMER_SPACE, "mask_prob": Floats(0.1, 0.5)}
FAMILY = Family("bert", "BERT4Rec", BertOptions, "esapr.models.bert4rec:BERT4Rec", "esapr.data.batches.bert:BertBatches",
                "SequenceBatch", TINY, check, space=SPACE)
