"""ESAPR+: ESAPR's VAE with SLIST's closed-form path over the same bag blended into its scores, and
three ways to let order inside the window in (all off by default)."""
from __future__ import annotations

from dataclasses import dataclass

from esapr.families.base import Choice, Family, Floats, Ints
from esapr.families.vae import SPACE as VAE_SPACE
from esapr.families.vae import TINY, VaeOptions, check
from esapr.options.spec import AT_LEAST_0, FRACTION, POSITIVE, PROBABILITY, Range, option, require


@dataclass
class EsaprPlusOptions(VaeOptions):
    linear_weight: float = option(0.0, "weight of the linear path's standardised scores added to the VAE's "
                                       "(0: ESAPR's scores)", valid=AT_LEAST_0)
    linear_lambda: float = option(50.0, "the linear path's L2 regulariser (SLIST's lambda)", valid=POSITIVE)
    linear_alpha: float = option(0.8, "the linear path's weight of the session part (SLIST's alpha)",
                                 valid=PROBABILITY)
    recent_items: int = option(0, "the most recent bag items that also enter the encoder through embeddings "
                                  "of their own position (0: the bag alone; each position is an items x hidden table)",
                               valid=Range(0, 32), default_as_before=True)
    transition_weight: float = option(0.0, "weight of the standardised item -> next-item scores of the last item "
                                           "added to the scores (0: none)", valid=AT_LEAST_0,
                                      default_as_before=True)
    transition_lambda: float = option(10.0, "the transition term's regulariser: T[i, j] = count(i then j) / "
                                            "(count(i then any) + lambda)", valid=POSITIVE,
                                      default_as_before=True)
    prefix_decay: float = option(0.0, "training windows end d items early, drawn every epoch with P(d) "
                                      "proportional to prefix_decay**d (0: at the history's end, as ESAPR)",
                                 valid=FRACTION, default_as_before=True)


def check_plus(options: EsaprPlusOptions) -> None:
    check(options)
    require(options.recent_items < options.max_len, "recent_items", options.recent_items,
            f"the bag holds at most max_len - 1 = {options.max_len - 1} items")


# the VAE's space (its part is searched as ESAPR's is), the blend with the linear path and the order variants
SPACE = {**VAE_SPACE, "linear_weight": Floats(0.0, 2.0), "linear_lambda": Floats(1.0, 1_000.0, log=True),
         "linear_alpha": Floats(0.0, 1.0), "recent_items": Ints(0, 4), "transition_weight": Floats(0.0, 1.0),
         "transition_lambda": Floats(1.0, 1_000.0, log=True), "prefix_decay": Choice(0.0, 0.5, 0.8, 0.95)}
FAMILY = Family("esapr_plus", "ESAPR+", EsaprPlusOptions, "esapr.models.esapr_plus:EsaprPlus",
                "esapr.data.batches.vae:EsaprPlusBatches", "BagBatch", {**TINY, "linear_weight": 0.5}, check_plus,
                space=SPACE)
