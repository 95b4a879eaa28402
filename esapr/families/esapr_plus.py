"""ESAPR+: ESAPR's VAE with SLIST's closed-form path over the same bag blended into its scores."""
from __future__ import annotations

from dataclasses import dataclass

from esapr.families.base import Family, Floats
from esapr.families.vae import SPACE as VAE_SPACE
from esapr.families.vae import TINY, VaeOptions, check
from esapr.options.spec import AT_LEAST_0, POSITIVE, PROBABILITY, option


@dataclass
class EsaprPlusOptions(VaeOptions):
    linear_weight: float = option(0.0, "weight of the linear path's standardised scores added to the VAE's "
                                       "(0: ESAPR's scores)", valid=AT_LEAST_0)
    linear_lambda: float = option(50.0, "the linear path's L2 regulariser (SLIST's lambda)", valid=POSITIVE)
    linear_alpha: float = option(0.8, "the linear path's weight of the session part (SLIST's alpha)",
                                 valid=PROBABILITY)


# the VAE's space (its part is searched as ESAPR's is) and the blend with the linear path
SPACE = {**VAE_SPACE, "linear_weight": Floats(0.0, 2.0), "linear_lambda": Floats(1.0, 1_000.0, log=True),
         "linear_alpha": Floats(0.0, 1.0)}
FAMILY = Family("esapr_plus", "ESAPR+", EsaprPlusOptions, "esapr.models.esapr_plus:EsaprPlus",
                "esapr.data.batches.vae:VaeBatches", "BagBatch", {**TINY, "linear_weight": 0.5}, check, space=SPACE)
