"""The model families: for each, its code, label, model class, batch builder, batch type and the
checks of its options. Importable without torch (classes are named, and imported when used).

A new family is one model file (plus a builder if none fits) and one entry in ``FAMILIES``;
config choices, result labels, ``esapr --help`` and the notebook forms read their lists here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from esapr.errors import UserError

# MEANTIME's temporal kernels: absolute (positional, day, constant) and relative (sinusoid,
# exponential, log)
ABSOLUTE_KERNELS = ("p", "d", "c")
RELATIVE_KERNELS = ("s", "e", "l")
# the values of --loss; the families with ``takes_loss`` read it, the others train with their own loss
LOSSES = ("bce", "ce", "sampled_ce")


def kernel_kinds(text: str | None) -> list[str]:
    """'p-d' -> ['p', 'd']."""
    return [k for k in (text or "").split("-") if k]


def _require(ok: bool, option: str, value: Any, allowed: str) -> None:
    if not ok:
        raise UserError(f"option '{option}' is {value!r}; {allowed}")


def _heads_divide(config, heads: int, what: str) -> None:
    _require(config.hidden_units % heads == 0, "num_heads", config.num_heads,
             f"{what} ({heads}) must divide hidden_units ({config.hidden_units})")


def _check_transformer(config) -> None:
    _heads_divide(config, config.num_heads, "num_heads")


def _check_masked(config) -> None:
    _require(0.0 < config.mask_prob <= 1.0, "mask_prob", config.mask_prob, "allowed: 0 < mask_prob <= 1")


def _check_negatives(config) -> None:
    _require(config.train_negative_sample_size > 0, "train_negative_sample_size", config.train_negative_sample_size,
             f"model '{config.model_code}' trains against sampled negatives: set it above 0 (its templates use 1000)")


def check_vae(config) -> None:
    _require(config.encode_len >= 1, "encode_len", config.encode_len, "allowed: at least 1")
    _require(all(size >= 1 for size in config.encoder_hidden_layer), "encoder_hidden_layer",
             config.encoder_hidden_layer, "every size must be at least 1")
    _require(config.max_len >= 2, "max_len", config.max_len, "the VAE needs at least 2 (a bag and a target)")


def check_bert(config) -> None:
    _check_masked(config)
    _check_transformer(config)


def _check_grid(config, *options: str) -> None:
    for option in options:
        _require(len(getattr(config, option)) >= 1, option, getattr(config, option), "give at least one value")


def check_sas(config) -> None:
    if config.loss == "bce":
        _check_negatives(config)
    _check_transformer(config)


def check_tisas(config) -> None:
    check_sas(config)
    _require(config.tisas_max_time_intervals >= 1, "tisas_max_time_intervals", config.tisas_max_time_intervals,
             "allowed: at least 1")


def check_meantime(config) -> None:
    _check_masked(config)
    absolute, relative = kernel_kinds(config.absolute_kernel_types), kernel_kinds(config.relative_kernel_types)
    for option, kinds, allowed in (("absolute_kernel_types", absolute, ABSOLUTE_KERNELS),
                                   ("relative_kernel_types", relative, RELATIVE_KERNELS)):
        _require(all(k in allowed for k in kinds), option, getattr(config, option),
                 f"it takes '-'-separated kernels from {', '.join(allowed)}")
    _require(bool(absolute or relative), "absolute_kernel_types", config.absolute_kernel_types,
             "MEANTIME needs at least one absolute or relative kernel")
    _heads_divide(config, config.num_heads * (len(absolute) + len(relative)),
                  "num_heads x the number of kernels")
    _require("s" not in relative or config.hidden_units % 2 == 0, "hidden_units", config.hidden_units,
             "the sinusoid kernel (s) needs an even size")
    _require(config.time_unit_divide >= 1, "time_unit_divide", config.time_unit_divide, "allowed: at least 1")
    _require(config.freq > 0, "freq", config.freq, "allowed: above 0")


def check_marank(config) -> None:
    _check_negatives(config)
    _require(config.marank_max_len >= 1, "marank_max_len", config.marank_max_len, "allowed: at least 1")
    for option in ("marank_num_att_layers", "marank_num_linear_layers"):
        _require(getattr(config, option) >= 0, option, getattr(config, option), "allowed: 0 or more")


def check_ease(config) -> None:
    _check_grid(config, "ease_lambdas")


def check_slist(config) -> None:
    _check_grid(config, "slist_lambdas", "slist_alphas")
    _require(config.max_len >= 2, "max_len", config.max_len, "SLIST needs at least 2 (a history item and a target)")


@dataclass(frozen=True)
class Family:
    code: str                       # the model_code
    label: str                      # the name in result tables (a template may set model_label)
    model: str                      # "module:Class" of the model
    builder: str                    # "module:Class" of the batch builder
    batch: str                      # the batch type's name in esapr.data.batches.types
    check: Callable[[Any], None] = field(default=lambda config: None)
    takes_loss: bool = False        # whether it trains with the loss that --loss names

    def validate(self, config) -> None:
        """The family's own checks, and --loss left at its default where the family does not read it."""
        _require(self.takes_loss or config.loss == LOSSES[0], "loss", config.loss,
                 f"model '{self.code}' trains with its own loss; --loss applies to "
                 f"{', '.join(code for code, f in FAMILIES.items() if f.takes_loss)}")
        self.check(config)

    def model_class(self) -> type:
        return _load(self.model)

    def builder_class(self) -> type:
        return _load(self.builder)

    def batch_class(self) -> type:
        return _load(f"esapr.data.batches.types:{self.batch}")


def _load(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


# in the order of the original paper's result table (its columns)
FAMILIES: dict[str, Family] = {f.code: f for f in (
    Family("marank", "MARank", "esapr.models.marank:MARank", "esapr.data.batches.sas:MarankBatches",
           "SequenceBatch", check_marank),
    Family("sas", "SASRec", "esapr.models.sasrec:SASRec", "esapr.data.batches.sas:SasBatches", "SequenceBatch",
           check_sas, takes_loss=True),
    Family("tisas", "TiSASRec", "esapr.models.tisasrec:TiSASRec", "esapr.data.batches.sas:TisasBatches",
           "SequenceBatch", check_tisas, takes_loss=True),
    Family("bert", "BERT4Rec", "esapr.models.bert4rec:BERT4Rec", "esapr.data.batches.bert:BertBatches",
           "SequenceBatch", check_bert),
    Family("meantime", "MEANTIME", "esapr.models.meantime:MEANTIME", "esapr.data.batches.bert:MeantimeBatches",
           "SequenceBatch", check_meantime),
    Family("vae", "VAE", "esapr.models.vae:VAE", "esapr.data.batches.vae:VaeBatches", "BagBatch", check_vae),
    Family("esapr_plus", "ESAPR+", "esapr.models.esapr_plus:EsaprPlus", "esapr.data.batches.vae:VaeBatches",
           "BagBatch", check_vae),
    Family("ease", "EASE", "esapr.models.ease:EASE", "esapr.data.batches.history:HistoryBatches", "HistoryBatch",
           check_ease),
    Family("slist", "SLIST", "esapr.models.slist:SLIST", "esapr.data.batches.history:RecentHistoryBatches",
           "HistoryBatch", check_slist),
)}


def family(code: str) -> Family:
    if code not in FAMILIES:
        raise UserError(f"unknown model_code '{code}'; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[code]
