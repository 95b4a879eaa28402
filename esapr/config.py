"""One typed Config: every option, its default, type, allowed values and help, in one place.

Precedence: dataclass defaults < templates (in the order given) < explicit overrides.
Templates are YAML files shipped in ``esapr/templates``; a template may itself name
``templates: [...]`` to build on others.
"""
from __future__ import annotations

import dataclasses
import difflib
import warnings
import math
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path, PurePath
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from esapr.data.sources import SOURCES
from esapr.errors import UserError
from esapr.registry import FAMILIES, LOSSES, family


@dataclass(frozen=True)
class Range:
    """Allowed numbers of an option (each element of a list option): low/high bounds, open or
    closed, plus ``also`` (special values such as -1 for "no limit"). Floats must be finite."""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    also: tuple = ()

    def allows(self, value: float) -> bool:
        if value in self.also:
            return True
        if isinstance(value, float) and not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {_number(self.low)}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {_number(self.high)}")
        text = " and ".join(parts) or "a finite number"
        return text + "".join(f", or {v}" for v in self.also)


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


AT_LEAST_0, AT_LEAST_1, POSITIVE = Range(0), Range(1), Range(0, low_open=True)
# sizes that allocate memory in proportion (or in square): far beyond any real dataset, low enough
# that a mistyped value is refused here instead of by the memory allocator
SIZE, SEED = Range(1, 10**7), Range(0, 2**63 - 1)
FRACTION = Range(0, 1, high_open=True)


def _opt(default, help: str, choices: tuple | None = None, group: str = "general", valid: Range | None = None):
    metadata = {"help": help, "choices": choices, "group": group, "valid": valid}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


DATASET_CODES = tuple(SOURCES)
MODEL_CODES = tuple(FAMILIES)


@dataclass
class Config:
    # --- run / experiment -------------------------------------------------------------------
    templates: list[str] = _opt([], "YAML templates applied in order (e.g. train_vae)", group="run")
    experiment_root: str = _opt("experiments", "root folder of all experiments", group="run")
    experiment_group: str | None = _opt(None, "sub-folder grouping experiments (default: the dataset)", group="run")
    experiment_name: str | None = _opt(None, "experiment folder name (default: the template's)", group="run")
    resume: bool = _opt(False, "continue an interrupted run from its last checkpoint", group="run")
    overwrite: bool = _opt(False, "replace a finished experiment in the same folder", group="run")
    checkpoint_every_seconds: float | None = _opt(None, "write the resumable checkpoint (it holds the best weights) at "
                                                        "most this often, in the background (0: every epoch; default: "
                                                        "30 s, 300 s on Google Drive); best_model.pth is written at "
                                                        "the end", group="run", valid=AT_LEAST_0)
    pilot: bool = _opt(False, "smoke test: one epoch of one batch, then test", group="run")
    device: str = _opt("auto", "where to train", ("auto", "cpu", "cuda"), group="run")
    amp: bool | None = _opt(None, "mixed precision (bf16, or fp16 with a scaler); default: on for CUDA", group="run")
    amp_dtype: str = _opt("auto", "mixed-precision type; auto: bf16 where the GPU has it natively (compute capability "
                                  ">= 8.0: A100, L4, H100), else fp16 with a GradScaler (T4, V100); bf16 on a CPU",
                          ("auto", "bf16", "fp16"), group="run")
    compile: bool = _opt(False, "torch.compile the training step (fuses the VAE's elementwise work: 14-30% less time "
                                "per step on a CPU); the first steps and each transfer stage compile first", group="run")
    deterministic: bool = _opt(False, "deterministic GPU kernels (torch.use_deterministic_algorithms, warn-only, and "
                                      "CUBLAS_WORKSPACE_CONFIG): reruns and resumes on one GPU give identical numbers, "
                                      "a little slower; the CPU is always deterministic", group="run")
    # --- data ------------------------------------------------------------------------------
    dataset_code: str | None = _opt("ml-1m", "dataset in the registry (ignored with data_file)", DATASET_CODES, "data")
    data_file: str | None = _opt(None, "your own ratings CSV/TSV (with header) or sequence file", group="data")
    data_url: str | None = _opt(None, "mirror URL (http(s) or Google Drive link) for the dataset", group="data")
    local_data_folder: str = _opt("./Data", "where raw data and caches live", group="data")
    min_rating: float = _opt(0, "keep interactions with rating >= this", group="data", valid=Range())
    min_uc: int = _opt(5, "keep users with at least this many interactions (after item filter)",
                       group="data", valid=AT_LEAST_0)
    min_sc: int = _opt(5, "keep items with at least this many interactions", group="data", valid=AT_LEAST_0)
    split: str = _opt("leave_one_out", "evaluation split", ("leave_one_out",), "data")
    # --- negatives ------------------------------------------------------------------------
    train_negative_sampler_code: str = _opt("random", "training negative pool sampler", ("random", "popular"), "negatives")
    train_negative_sample_size: int = _opt(0, "training negatives per user (0 = none)",
                                           group="negatives", valid=Range(0, 10**7))
    train_negative_sampling_seed: int = _opt(0, "seed of the training negatives", group="negatives", valid=SEED)
    test_negative_sampler_code: str = _opt("popular", "evaluation negative sampler", ("random", "popular"), "negatives")
    test_negative_sample_size: int = _opt(100, "evaluation negatives per user", group="negatives", valid=SIZE)
    test_negative_sampling_seed: int = _opt(98765, "seed of the evaluation negatives",
                                            group="negatives", valid=SEED)
    legacy_negatives: bool = _opt(False, "reproduce the original's per-user numpy draws exactly", group="negatives")
    # --- batches ---------------------------------------------------------------------------
    dataloader_random_seed: int = _opt(0, "seed of shuffling, masking and training negatives",
                                       group="batches", valid=SEED)
    train_batch_size: int = _opt(256, "training batch size", group="batches", valid=SIZE)
    val_batch_size: int = _opt(256, "validation batch size", group="batches", valid=SIZE)
    test_batch_size: int = _opt(256, "test batch size", group="batches", valid=SIZE)
    train_window: int | None = _opt(100, "step between sliding training windows (0/None: one per user)",
                                    group="batches", valid=AT_LEAST_0)
    max_len: int = _opt(200, "window length", group="batches", valid=Range(1, 10**5))
    mask_prob: float = _opt(0.2, "BERT masking probability", group="batches", valid=Range(0, 1))
    weight_type: str = _opt("exp_stair", "VAE position weights", ("exp_stair", "exp", "linear", "constant"), "batches")
    weight_constant: float = _opt(2.0, "VAE weight constant c", group="batches", valid=POSITIVE)
    aug_prob: float = _opt(0.0, "VAE input augmentation probability", group="batches", valid=Range(0, 1))
    legacy_bag: bool = _opt(False, "VAE bag as the original: pad index 0 weighted in the input and the loss, repeats keep one weight",
                            group="batches")
    # --- optimisation ----------------------------------------------------------------------
    optimizer: str = _opt("Adam", "optimizer", ("Adam", "SGD"), "train")
    lr: float = _opt(1e-3, "learning rate", group="train", valid=POSITIVE)
    weight_decay: float = _opt(0.0, "L2 weight decay", group="train", valid=AT_LEAST_0)
    momentum: float | None = _opt(None, "SGD momentum", group="train", valid=AT_LEAST_0)
    decay_step: int = _opt(25, "StepLR step (epochs)", group="train", valid=Range(1, 2**31 - 1))
    gamma: float = _opt(1.0, "StepLR factor", group="train", valid=POSITIVE)
    clip_grad_norm: float | None = _opt(5.0, "clip the global gradient norm (None: off)", group="train", valid=POSITIVE)
    num_epochs: int = _opt(-1, "maximum epochs (-1: until early stopping)", group="train",
                          valid=Range(1, 2**31 - 1, also=(-1,)))
    metric_ks: list[int] = _opt([1, 5, 10, 20, 50], "cut-offs of Recall@k and NDCG@k", group="train", valid=SIZE)
    best_metric: str = _opt("NDCG@10", "validation metric that selects the best model", group="train")
    saturation_wait_epochs: int = _opt(20, "patience (epochs without improvement)", group="train", valid=AT_LEAST_0)
    full_ranking: bool = _opt(True, "also report metrics ranked against every unseen item", group="train")
    # --- VAE schedule ----------------------------------------------------------------------
    total_anneal_steps: int = _opt(262144, "KL annealing steps", group="vae", valid=AT_LEAST_0)
    anneal_cap: float = _opt(0.2, "largest KL weight", group="vae", valid=AT_LEAST_0)
    train_transfer: bool = _opt(True, "halve recover_len at each plateau (transfer training)", group="vae")
    scaled_loss: bool = _opt(True, "rescale the loss by total/recovered weight", group="vae")
    decrease_dropout: bool = _opt(False, "scale input dropout by recover_len/max_len after transfers", group="vae")
    best_model_transfer: bool = _opt(True, "reload the best weights at each transfer", group="vae")
    normalize_type: str = _opt("f", "VAE input normalisation: f (L2) or batch (BatchNorm)", ("f", "batch"), "vae")
    encode_len: int = _opt(128, "VAE latent size", group="vae", valid=SIZE)
    encoder_hidden_layer: list[int] = _opt([512], "VAE encoder hidden sizes", group="vae", valid=SIZE)
    decoder_activation: str = _opt("relu", "VAE decoder nonlinearity (none = the original's bug)", ("none", "relu", "tanh"), "vae")
    # --- models -----------------------------------------------------------------------------
    model_code: str = _opt("bert", "model family", MODEL_CODES, "model")
    model_label: str | None = _opt(None, "the model's name in result tables (default: the family's)", group="model")
    model_init_seed: int = _opt(0, "seed of the weight initialisation", group="model", valid=SEED)
    model_init_range: float = _opt(0.02, "std of the transformer initialisation", group="model", valid=AT_LEAST_0)
    hidden_units: int = _opt(64, "transformer hidden size", group="model", valid=SIZE)
    num_blocks: int = _opt(2, "transformer blocks", group="model", valid=Range(1, 1000))
    num_heads: int = _opt(2, "attention heads (MEANTIME: heads per kernel)", group="model", valid=Range(1, 1000))
    dropout: float = _opt(0.2, "dropout", group="model", valid=FRACTION)
    residual_ln_type: str = _opt("pre", "LayerNorm placement", ("pre", "post"), "model")
    headtype: str = _opt("dot", "prediction head", ("dot", "linear"), "model")
    head_use_ln: bool = _opt(False, "LayerNorm in the prediction head", group="model")
    time_unit_divide: int = _opt(1, "MEANTIME time unit", group="model", valid=AT_LEAST_1)
    freq: int = _opt(10000, "MEANTIME kernel base frequency", group="model", valid=POSITIVE)
    tisas_max_time_intervals: int = _opt(2048, "TiSASRec interval clip", group="model", valid=SIZE)
    loss: str = _opt("bce", "SASRec/TiSASRec training loss at every labelled position: bce (the original: against "
                            "one negative from the user's pool), ce (softmax over every item), sampled_ce (softmax "
                            "over the next item and num_negatives uniform items shared by the batch); other models "
                            "have their own loss and take only the default", LOSSES, "model")
    num_negatives: int = _opt(256, "sampled_ce: items drawn uniformly (with replacement) per batch", group="model",
                              valid=Range(1, 10**6))
    marank_max_len: int = _opt(6, "MARank context length", group="model", valid=Range(1, 10**5))
    marank_num_att_layers: int = _opt(2, "MARank attention layers", group="model", valid=AT_LEAST_0)
    marank_num_linear_layers: int = _opt(2, "MARank residual layers", group="model", valid=AT_LEAST_0)
    absolute_kernel_types: str = _opt("p-d", "MEANTIME absolute kernels from p, d, c ('-'-separated)", group="model")
    relative_kernel_types: str = _opt("s-l", "MEANTIME relative kernels from s, e, l ('-'-separated)", group="model")
    # --- closed-form linear models: a setting per epoch, the best on validation is tested ----------
    ease_lambdas: list[float] = _opt([20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0],
                                     "EASE L2 regularisers, fitted in turn (one per epoch); the best on validation "
                                     "is tested", group="linear", valid=POSITIVE)
    slist_lambdas: list[float] = _opt([10.0, 50.0, 200.0, 1000.0], "SLIST L2 regularisers, each fitted with every "
                                      "alpha (one setting per epoch); the best on validation is tested",
                                      group="linear", valid=POSITIVE)
    slist_alphas: list[float] = _opt([0.2, 0.5, 0.8], "SLIST weight of the session part against the transition "
                                                      "part (1: weighted EASE)", group="linear", valid=Range(0, 1))
    # --- ESAPR+: ESAPR with SLIST's closed-form path blended into its scores -----------------------
    linear_weight: float = _opt(0.0, "ESAPR+: weight of the linear path's standardised scores added to the VAE's "
                                     "(0: ESAPR's scores)", group="linear", valid=AT_LEAST_0)
    linear_lambda: float = _opt(50.0, "ESAPR+: the linear path's L2 regulariser (SLIST's lambda)", group="linear",
                                valid=POSITIVE)
    linear_alpha: float = _opt(0.8, "ESAPR+: the linear path's weight of the session part (SLIST's alpha)",
                               group="linear", valid=Range(0, 1))

    # ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


OPTIONS = {f.name: f for f in fields(Config)}
_TYPES = get_type_hints(Config)


def template_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("esapr.templates").iterdir() if p.name.endswith(".yaml"))


def read_template(name: str) -> dict[str, Any]:
    """A packaged template by name, or the user's own template as a path ending in .yaml."""
    if name.endswith((".yaml", ".yml")):
        path = Path(name)
        if not path.is_file():
            raise UserError(f"{path}: template file not found")
    else:
        path = resources.files("esapr.templates") / f"{name}.yaml"
        if name not in template_names():
            raise UserError(f"unknown template '{name}'{_nearest(name, template_names())}; available: "
                            f"{', '.join(template_names())} (your own template: a path ending in .yaml)")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"template '{name}' is not valid YAML{where} "
                        f"({getattr(error, 'problem', None) or 'syntax error'})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"template '{name}' cannot be read ({error})") from None
    values = values or {}
    if not isinstance(values, dict):
        raise UserError(f"template '{name}' is not a mapping of option: value")
    return values


def _nearest(name: str, candidates) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _parse_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("yes", "true", "t", "y", "1"):
        return True
    if text in ("no", "false", "f", "n", "0"):
        return False
    raise UserError(f"option '{name}' expects true/false, got '{value}'")


def coerce(name: str, value: Any) -> Any:
    """Convert a CLI string or YAML value to the option's type, or raise UserError."""
    if name not in OPTIONS:
        raise UserError(f"unknown option '{name}'{_nearest(name, OPTIONS)}")
    hint = _TYPES[name]
    args = get_args(hint)
    optional = type(None) in args
    if optional and (value is None or (isinstance(value, str) and value.lower() in ("none", "null", ""))):
        return None
    base = next((a for a in args if a is not type(None)), hint) if args and get_origin(hint) is not list else hint
    try:
        if get_origin(base) is list:
            item_type = get_args(base)[0]
            items = value if isinstance(value, (list, tuple)) else str(value).replace(",", " ").split()
            result = [item_type(v) for v in items]
        elif base is bool:
            result = _parse_bool(name, value)
        elif base is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            result = int(float(value)) if isinstance(value, str) else int(value)
        elif base is float:
            result = float(value)
        else:
            result = str(value)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"option '{name}' expects {getattr(base, '__name__', base)}, got '{value}'") from None
    choices = OPTIONS[name].metadata["choices"]
    if choices and result not in choices:
        raise UserError(f"option '{name}' must be one of {', '.join(map(str, choices))}, "
                        f"got '{result}'{_nearest(str(result), map(str, choices))}")
    return result


def _expand_templates(names: list[str], seen: tuple = ()) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for name in names:
        if name in seen:
            raise UserError(f"template '{name}' includes itself")
        values = read_template(name)
        parents = values.pop("templates", [])
        parents = [parents] if isinstance(parents, str) else parents
        if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
            raise UserError(f"template '{name}': 'templates' must be a template name or a list of them, "
                            f"got {parents!r}")
        for key in values:
            if key not in OPTIONS:
                raise UserError(f"template '{name}': unknown option '{key}'{_nearest(str(key), OPTIONS)}")
        merged.update(_expand_templates(parents, seen + (name,)))
        merged.update(values)
    return merged


def build_config(templates: list[str] | None = None, overrides: dict[str, Any] | None = None,
                 apply_templates: bool = True) -> Config:
    """defaults < templates (in order) < overrides; every value is type-checked and validated."""
    overrides = dict(overrides or {})
    templates = coerce("templates", templates or overrides.pop("templates", None) or [])
    values: dict[str, Any] = {}
    if apply_templates:
        _warn_mixed_models(templates)
        values.update(_expand_templates(templates))
    values.update(overrides)
    values["templates"] = templates
    config = Config(**{name: coerce(name, value) for name, value in values.items()})
    if config.experiment_name is None:
        config.experiment_name = PurePath(templates[-1]).stem.removeprefix("train_") if templates else config.model_code
    if config.experiment_group is None:
        config.experiment_group = _data_group(config)
    validate(config)
    return config


def _data_group(config: Config) -> str:
    """The default experiment group: the dataset, or the data file's name without its suffix."""
    if not config.data_file:
        return config.dataset_code
    stem = PurePath(config.data_file).stem
    if not _is_safe_component(stem):
        raise UserError(f"the data file's name {PurePath(config.data_file).name!r} makes no folder name for its "
                        f"experiments; pass --experiment_group NAME")
    return stem


def _warn_mixed_models(templates: list[str]) -> None:
    codes = {name: _expand_templates([name]).get("model_code") for name in templates}
    named = {name: code for name, code in codes.items() if code is not None}
    if len(set(named.values())) > 1:
        last = list(named.values())[-1]
        warnings.warn(f"the templates set different model_code values ("
                      f"{', '.join(f'{n}: {c}' for n, c in named.items())}); the last one wins: {last}", stacklevel=3)


def metric_names(config: Config) -> list[str]:
    """Every metric a run computes (sampled, then full ranking when on)."""
    ks = sorted(set(config.metric_ks))
    names = [f"NDCG@{k}" for k in ks] + [f"Recall@{k}" for k in ks] + ["MRR"]
    return names + [f"full_{name}" for name in names] if config.full_ranking else names


# options that do not change what a run computes: a saved run may be resumed or reused with others
# (the folder's names too: a run copied or moved to another folder is the same run)
RUN_ONLY = frozenset({"templates", "resume", "overwrite", "device", "local_data_folder", "experiment_root",
                      "experiment_group", "experiment_name", "checkpoint_every_seconds", "model_label",
                      "deterministic", "compile"})


def config_differences(saved: dict, config: Config, ignore: frozenset = RUN_ONLY) -> list[tuple[str, Any, Any]]:
    """(option, saved value, requested value) for each option whose value differs from a saved
    run's config.json (options the saved file lacks are compared with their defaults)."""
    differences = []
    for name, value in config.to_dict().items():
        if name in ignore:
            continue
        f = OPTIONS[name]
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        before = saved.get(name, default)
        if before != value:
            differences.append((name, before, value))
    return differences


def describe_differences(differences: list[tuple[str, Any, Any]]) -> str:
    return ", ".join(f"{name} (saved {before!r}, now {now!r})" for name, before, now in differences)


# a resume runs for the epochs it is asked for (--num_epochs extends or caps a run; the epochs already
# run do not depend on it), and may find the data elsewhere (its fingerprint is checked)
RESUME_EPOCHS, RESUME_DATA = frozenset({"num_epochs"}), frozenset({"data_file", "data_url"})
# run-only options a resume keeps from the saved run unless the request names them
RESUME_NAMING = frozenset({"templates", "model_label"})


def given_options(templates: list[str], overrides: dict[str, Any]) -> frozenset[str]:
    """The options a command line sets: those given directly and those its templates set."""
    names = set(overrides) | set(_expand_templates(templates))
    return frozenset(names | {"templates"} if templates else names)


def resumed_config(saved: dict, requested: Config, path, given: frozenset[str] | None = None) -> Config:
    """The saved run's options, with the run-only options from the request, and num_epochs and
    the data's location where the request sets them. ``given`` names the options the user set
    (None: every option of ``requested`` that is not its default counts as set, and num_epochs is
    always the request's). A set option that differs from the saved run is an error naming each
    such option with both values."""
    defaults = Config()

    def is_given(name: str) -> bool:
        return name in given if given is not None else getattr(requested, name) != getattr(defaults, name)

    differences = config_differences(saved, requested, RUN_ONLY | RESUME_EPOCHS | RESUME_DATA)
    asked = [(name, before, now) for name, before, now in differences if is_given(name)]
    if asked:
        raise UserError(f"{path}: --resume with options that differ from the saved run: "
                        f"{describe_differences(asked)}; drop them to continue the run as it was, "
                        f"or start a new experiment")
    options = {name: value for name, value in saved.items() if name in OPTIONS}
    options.update({name: getattr(requested, name) for name in RUN_ONLY - RESUME_NAMING})
    taken = RESUME_NAMING | RESUME_DATA | (RESUME_EPOCHS if given is not None else frozenset())
    options.update({name: getattr(requested, name) for name in taken if is_given(name)})
    if given is None:
        options["num_epochs"] = requested.num_epochs
    return build_config(overrides=options, apply_templates=False)


def _is_safe_component(value: str) -> bool:
    """One path component inside its parent: not empty, '.' or '..', no separator or control
    character, no surrounding spaces, at most 255 bytes."""
    return (value not in ("", ".", "..") and value == value.strip()
            and not any(ord(c) < 32 or c in "/\\" for c in value)
            and len(value.encode(errors="surrogateescape")) <= 255)


def _safe_component(option: str, value: str) -> None:
    """A folder name inside the experiment root: one path component, nothing that climbs out."""
    if not _is_safe_component(value):
        raise UserError(f"option '{option}' is {value!r}; it must be a plain folder name "
                        f"(no '/', '\\', '..', control characters or absolute path; at most 255 bytes)")


def validate(config: Config) -> None:
    """Every range, every cross-option check and the model family's own checks, before any I/O."""
    for name, f in OPTIONS.items():
        valid: Range | None = f.metadata["valid"]
        value = getattr(config, name)
        if valid is None or value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            if not valid.allows(item):
                raise UserError(f"option '{name}' is {value!r}; allowed: {valid.describe()}")
    if not config.metric_ks:
        raise UserError("option 'metric_ks' is empty; give at least one cut-off, e.g. --metric_ks 1 5 10")
    names = metric_names(config)
    if config.best_metric not in names:
        raise UserError(f"option 'best_metric' is {config.best_metric!r}, which is not computed"
                        f"{_nearest(config.best_metric, names)}; choose one of {', '.join(names)}")
    _safe_component("experiment_group", config.experiment_group)
    _safe_component("experiment_name", config.experiment_name)
    if config.dataset_code is None and not config.data_file:
        raise UserError("no data: set --dataset_code or --data_file")
    if config.resume and config.overwrite:
        raise UserError("option 'resume' and option 'overwrite' are both set; choose one: --resume continues the "
                        "saved run, --overwrite replaces it")
    family(config.model_code).validate(config)


def describe_options(config: Config | None = None, groups: tuple[str, ...] | None = None) -> str:
    """One line per option with its help: the default, or the value ``config`` gives it."""
    lines = []
    for f in fields(Config):
        if groups is not None and f.metadata["group"] not in groups:
            continue
        choices = f.metadata["choices"]
        if config is not None:
            shown = f"value {getattr(config, f.name)!r}"
        else:
            shown = f"default {f.default_factory() if f.default is dataclasses.MISSING else f.default!r}"
        extra = f" {{{'|'.join(map(str, choices))}}}" if choices else ""
        lines.append(f"  --{f.name}{extra}  ({shown}) {f.metadata['help']}")
    return "\n".join(lines)
