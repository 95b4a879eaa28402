"""ESAPR+: ESAPR's VAE with SLIST's closed-form path over the same bag blended into its scores."""
from __future__ import annotations

from dataclasses import dataclass

from esapr.families.base import Family
from esapr.families.vae import TINY, VaeOptions, check
from esapr.options.spec import AT_LEAST_0, POSITIVE, PROBABILITY, option


@dataclass
class EsaprPlusOptions(VaeOptions):
    linear_weight: float = option(0.0, "weight of the linear path's standardised scores added to the VAE's "
                                       "(0: ESAPR's scores)", valid=AT_LEAST_0)
    linear_lambda: float = option(50.0, "the linear path's L2 regulariser (SLIST's lambda)", valid=POSITIVE)
    linear_alpha: float = option(0.8, "the linear path's weight of the session part (SLIST's alpha)",
                                 valid=PROBABILITY)


FAMILY = Family("esapr_plus", "ESAPR+", EsaprPlusOptions, "esapr.models.esapr_plus:EsaprPlus",
                "esapr.data.batches.vae:VaeBatches", "BagBatch", {**TINY, "linear_weight": 0.5}, check)
