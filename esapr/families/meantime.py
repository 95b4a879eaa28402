"""MEANTIME: BERT4Rec whose attention heads each use one temporal kernel."""
from __future__ import annotations

from dataclasses import dataclass

from esapr.families.base import TRANSFORMER_SPACE, Choice, Family, Floats, MaskedOptions, check_heads, check_masked
from esapr.options.spec import AT_LEAST_1, POSITIVE, Range, option, require

# the temporal kernels: absolute (positional, day, constant) and relative (sinusoid, exponential, log)
ABSOLUTE_KERNELS = ("p", "d", "c")
RELATIVE_KERNELS = ("s", "e", "l")


def kernel_kinds(text: str | None) -> list[str]:
    """'p-d' -> ['p', 'd']."""
    return [k for k in (text or "").split("-") if k]


@dataclass
class MeantimeOptions(MaskedOptions):
    num_heads: int = option(2, "attention heads per kernel", valid=Range(1, 1000))
    time_unit_divide: int = option(1, "time unit of the relative kernels (seconds)", valid=AT_LEAST_1)
    freq: int = option(10000, "base frequency of the sinusoid kernels", valid=POSITIVE)
    absolute_kernel_types: str = option("p-d", "absolute kernels from p, d, c ('-'-separated)")
    relative_kernel_types: str = option("s-l", "relative kernels from s, e, l ('-'-separated)")


def check(options: MeantimeOptions) -> None:
    check_masked(options)
    absolute, relative = kernel_kinds(options.absolute_kernel_types), kernel_kinds(options.relative_kernel_types)
    for name, kinds, allowed in (("absolute_kernel_types", absolute, ABSOLUTE_KERNELS),
                                 ("relative_kernel_types", relative, RELATIVE_KERNELS)):
        require(all(k in allowed for k in kinds), name, getattr(options, name),
                f"it takes '-'-separated kernels from {', '.join(allowed)}")
    require(bool(absolute or relative), "absolute_kernel_types", options.absolute_kernel_types,
            "MEANTIME needs at least one absolute or relative kernel")
    check_heads(options, options.num_heads * (len(absolute) + len(relative)), "num_heads x the number of kernels")
    require("s" not in relative or options.hidden_units % 2 == 0, "hidden_units", options.hidden_units,
            "the sinusoid kernel (s) needs an even size")


TINY = {"max_len": 10, "train_window": 2, "train_batch_size": 40, "val_batch_size": 50, "test_batch_size": 50,
        "hidden_units": 16, "num_heads": 1, "num_blocks": 1, "test_negative_sample_size": 20}
# heads per kernel: with its 4 kernels, 1 or 2 heads divide every hidden size of the space
SPACE = {**TRANSFORMER_SPACE, "num_heads": Choice(1, 2), "mask_prob": Floats(0.1, 0.5)}
FAMILY = Family("meantime", "MEANTIME", MeantimeOptions, "esapr.models.meantime:MEANTIME",
                "esapr.data.batches.bert:MeantimeBatches", "SequenceBatch", TINY, check, space=SPACE)
