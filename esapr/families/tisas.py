"""TiSASRec: SASRec with relative time-interval embeddings."""
from __future__ import annotations

from dataclasses import dataclass

from esapr.families.base import Family
from esapr.families.sas import SPACE, TINY, SasOptions, check
from esapr.options.spec import SIZE, option


@dataclass
class TisasOptions(SasOptions):
    tisas_max_time_intervals: int = option(2048, "largest time interval (longer ones are clipped)", valid=SIZE)


FAMILY = Family("tisas", "TiSASRec", TisasOptions, "esapr.models.tisasrec:TiSASRec",
                "esapr.data.batches.sas:TisasBatches", "SequenceBatch", TINY, check, space=SPACE)
