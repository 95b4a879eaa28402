"""What a model family is, and the option parts several families share.

A family declares (torch-free) its options dataclass, its own checks, its label in tables,
where its model and batch builder live, whether it is trained by gradient steps (and so reads
``TrainOptions``) and a tiny preset that trains in a second (tests, smoke runs)."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from esapr.options.spec import (AT_LEAST_0, FRACTION, POSITIVE, PROBABILITY, SEED, SIZE, Range, option,
                                require)


@dataclass
class ModelOptions:
    """The base of every family's options (a closed-form model may have nothing else)."""


@dataclass
class WindowOptions(ModelOptions):
    max_len: int = option(200, "window length: the most recent items a model sees", valid=Range(1, 10**5))


@dataclass
class RecencyWeights:
    """ESAPR's recency weights over a window (VAE bag and loss, SLIST's histories)."""
    weight_type: str = option("exp_stair", "position weights of the bag", ("exp_stair", "exp", "linear", "constant"))
    weight_constant: float = option(2.0, "weight constant c of the position weights", valid=POSITIVE)


@dataclass
class NegativePool:
    """A fixed per-user pool of training negatives, sampled once with the data (cached)."""
    train_negative_sampler_code: str = option("random", "training negative pool sampler", ("random", "popular"))
    train_negative_sample_size: int = option(0, "training negatives per user (0 = none)", valid=Range(0, 10**7))
    train_negative_sampling_seed: int = option(0, "seed of the training negatives", valid=SEED)


@dataclass
class EmbeddingOptions(WindowOptions):
    hidden_units: int = option(64, "hidden size", valid=SIZE)
    dropout: float = option(0.2, "dropout", valid=FRACTION)
    model_init_range: float = option(0.02, "std of the weight initialisation", valid=AT_LEAST_0)


@dataclass
class TransformerOptions(EmbeddingOptions):
    num_blocks: int = option(2, "transformer blocks", valid=Range(1, 1000))
    num_heads: int = option(2, "attention heads", valid=Range(1, 1000))


@dataclass
class MaskedOptions(TransformerOptions):
    """BERT4Rec's masked-item training and prediction head (MEANTIME shares them)."""
    mask_prob: float = option(0.2, "masking probability", valid=PROBABILITY)
    residual_ln_type: str = option("pre", "LayerNorm placement", ("pre", "post"))
    headtype: str = option("dot", "prediction head", ("dot", "linear"))
    head_use_ln: bool = option(False, "LayerNorm in the prediction head")


# --- search spaces: what a fair hyper-parameter search of a family covers (``esapr tune``) ------------
@dataclass(frozen=True)
class Floats:
    """A float option searched from ``low`` to ``high`` (``log``: evenly on a log scale)."""
    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class Ints:
    """A whole-number option searched from ``low`` to ``high``. A list option (``encoder_hidden_layer``,
    ``ease_lambdas``) searched this way, or with ``Floats``, takes a list of the one value drawn."""
    low: int
    high: int
    log: bool = False


@dataclass(frozen=True)
class Choice:
    """An option searched over a few values: ``Choice("exp_stair", "constant")``."""
    values: tuple

    def __init__(self, *values):
        object.__setattr__(self, "values", values)


# a family's SPACE: option name -> how a search draws it (checked against each option's own range and choices)
Space = dict[str, Floats | Ints | Choice]
# the optimizer's options, searched for every family trained by gradient steps
TRAINING_SPACE: Space = {"lr": Floats(1e-4, 1e-2, log=True), "weight_decay": Floats(1e-8, 1e-3, log=True)}
TRANSFORMER_SPACE: Space = {**TRAINING_SPACE, "dropout": Floats(0.0, 0.5), "hidden_units": Choice(32, 64, 128),
                            "num_blocks": Ints(1, 3), "num_heads": Choice(1, 2, 4), "max_len": Ints(20, 200, log=True)}


def check_heads(options: TransformerOptions, heads: int, what: str) -> None:
    require(options.hidden_units % heads == 0, "num_heads", options.num_heads,
            f"{what} ({heads}) must divide hidden_units ({options.hidden_units})")


def check_masked(options: MaskedOptions) -> None:
    require(0.0 < options.mask_prob <= 1.0, "mask_prob", options.mask_prob, "allowed: 0 < mask_prob <= 1")


def check_pool(options: NegativePool, code: str) -> None:
    require(options.train_negative_sample_size > 0, "train_negative_sample_size", options.train_negative_sample_size,
            f"model '{code}' trains against sampled negatives: set it above 0 (its templates use 1000)")


@dataclass(frozen=True)
class Family:
    code: str                       # the model_code
    label: str                      # the name in result tables (a template may set model_label)
    options: type                   # its options dataclass (a ModelOptions)
    model: str                      # "module:Class" of the model
    builder: str                    # "module:Class" of the batch builder
    batch: str                      # the batch type's name in esapr.data.batches.types
    preset: dict[str, Any]          # a tiny model (with the shared options it needs) that trains in a second
    check: Callable[[Any], None] = field(default=lambda options: None)
    trained: bool = True            # by gradient steps (reads TrainOptions); False: a closed-form grid
    space: Space = field(default_factory=dict)      # what ``esapr tune`` searches (see Floats, Ints, Choice)

    def model_class(self) -> type:
        return _load(self.model)

    def builder_class(self) -> type:
        return _load(self.builder)

    def batch_class(self) -> type:
        return _load(f"esapr.data.batches.types:{self.batch}")


def _load(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)
