"""One typed Config: every option, its default, type, allowed values and help, in one place.

Precedence: dataclass defaults < templates (in the order given) < explicit overrides.
Templates are YAML files shipped in ``esapr/templates``; a template may itself name
``templates: [...]`` to build on others.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from esapr.errors import UserError


def _opt(default, help: str, choices: tuple | None = None, group: str = "general"):
    if isinstance(default, list):
        return field(default_factory=lambda: list(default),
                     metadata={"help": help, "choices": choices, "group": group})
    return field(default=default, metadata={"help": help, "choices": choices, "group": group})


DATASET_CODES = ("ml-100k", "ml-1m", "ml-20m", "beauty", "game")
MODEL_CODES = ("vae", "bert", "sas", "tisas", "meantime", "marank")


@dataclass
class Config:
    # --- run / experiment -------------------------------------------------------------------
    templates: list[str] = _opt([], "YAML templates applied in order (e.g. train_vae)", group="run")
    experiment_root: str = _opt("experiments", "root folder of all experiments", group="run")
    experiment_group: str = _opt("test", "sub-folder grouping experiments", group="run")
    experiment_name: str | None = _opt(None, "experiment folder name (default: the template's)", group="run")
    resume: bool = _opt(False, "continue an interrupted run from its last checkpoint", group="run")
    overwrite: bool = _opt(False, "replace a finished experiment in the same folder", group="run")
    checkpoint_every_seconds: float = _opt(30.0, "write the resumable checkpoint at most this often (0: every "
                                                 "epoch); the best model is saved at every improvement", group="run")
    pilot: bool = _opt(False, "smoke test: one epoch of one batch, then test", group="run")
    device: str = _opt("auto", "where to train", ("auto", "cpu", "cuda"), group="run")
    amp: bool | None = _opt(None, "mixed precision (bf16, or fp16 with a scaler); default: on for CUDA", group="run")
    # --- data ------------------------------------------------------------------------------
    dataset_code: str | None = _opt("ml-1m", "dataset in the registry (ignored with data_file)", DATASET_CODES, "data")
    data_file: str | None = _opt(None, "your own ratings CSV/TSV (with header) or sequence file", group="data")
    data_url: str | None = _opt(None, "mirror URL (http(s) or Google Drive link) for the dataset", group="data")
    local_data_folder: str = _opt("./Data", "where raw data and caches live", group="data")
    min_rating: float = _opt(0, "keep interactions with rating >= this", group="data")
    min_uc: int = _opt(5, "keep users with at least this many interactions (after item filter)", group="data")
    min_sc: int = _opt(5, "keep items with at least this many interactions", group="data")
    split: str = _opt("leave_one_out", "evaluation split", ("leave_one_out",), "data")
    # --- negatives ------------------------------------------------------------------------
    train_negative_sampler_code: str = _opt("random", "training negative pool sampler", ("random", "popular"), "negatives")
    train_negative_sample_size: int = _opt(0, "training negatives per user (0 = none)", group="negatives")
    train_negative_sampling_seed: int = _opt(0, "seed of the training negatives", group="negatives")
    test_negative_sampler_code: str = _opt("popular", "evaluation negative sampler", ("random", "popular"), "negatives")
    test_negative_sample_size: int = _opt(100, "evaluation negatives per user", group="negatives")
    test_negative_sampling_seed: int = _opt(98765, "seed of the evaluation negatives", group="negatives")
    legacy_negatives: bool = _opt(False, "reproduce the original's per-user numpy draws exactly", group="negatives")
    # --- batches ---------------------------------------------------------------------------
    dataloader_random_seed: int = _opt(0, "seed of shuffling, masking and training negatives", group="batches")
    train_batch_size: int = _opt(256, "training batch size", group="batches")
    val_batch_size: int = _opt(256, "validation batch size", group="batches")
    test_batch_size: int = _opt(256, "test batch size", group="batches")
    train_window: int | None = _opt(100, "step between sliding training windows (0/None: one per user)", group="batches")
    max_len: int = _opt(200, "window length", group="batches")
    mask_prob: float = _opt(0.2, "BERT masking probability", group="batches")
    weight_type: str = _opt("exp_stair", "VAE position weights", ("exp_stair", "exp", "linear", "constant"), "batches")
    weight_constant: float = _opt(2.0, "VAE weight constant c", group="batches")
    aug_prob: float = _opt(0.0, "VAE input augmentation probability", group="batches")
    legacy_bag: bool = _opt(False, "VAE bag as the original: pad index 0 weighted in the input and the loss, repeats keep one weight", group="batches")
    # --- optimisation ----------------------------------------------------------------------
    optimizer: str = _opt("Adam", "optimizer", ("Adam", "SGD"), "train")
    lr: float = _opt(1e-3, "learning rate", group="train")
    weight_decay: float = _opt(0.0, "L2 weight decay", group="train")
    momentum: float | None = _opt(None, "SGD momentum", group="train")
    decay_step: int = _opt(25, "StepLR step (epochs)", group="train")
    gamma: float = _opt(1.0, "StepLR factor", group="train")
    clip_grad_norm: float | None = _opt(5.0, "clip the global gradient norm (None: off)", group="train")
    num_epochs: int = _opt(-1, "maximum epochs (-1: until early stopping)", group="train")
    metric_ks: list[int] = _opt([1, 5, 10, 20, 50], "cut-offs of Recall@k and NDCG@k", group="train")
    best_metric: str = _opt("NDCG@10", "validation metric that selects the best model", group="train")
    saturation_wait_epochs: int = _opt(20, "patience (epochs without improvement)", group="train")
    full_ranking: bool = _opt(True, "also report metrics ranked against every unseen item", group="train")
    # --- VAE schedule ----------------------------------------------------------------------
    total_anneal_steps: int = _opt(262144, "KL annealing steps", group="vae")
    anneal_cap: float = _opt(0.2, "largest KL weight", group="vae")
    train_transfer: bool = _opt(True, "halve recover_len at each plateau (transfer training)", group="vae")
    scaled_loss: bool = _opt(True, "rescale the loss by total/recovered weight", group="vae")
    decrease_dropout: bool = _opt(False, "scale input dropout by recover_len/max_len after transfers", group="vae")
    best_model_transfer: bool = _opt(True, "reload the best weights at each transfer", group="vae")
    normalize_type: str = _opt("f", "VAE input normalisation: f (L2) or batch (BatchNorm)", ("f", "batch"), "vae")
    encode_len: int = _opt(128, "VAE latent size", group="vae")
    encoder_hidden_layer: list[int] = _opt([512], "VAE encoder hidden sizes", group="vae")
    decoder_activation: str = _opt("relu", "VAE decoder nonlinearity (none = the original's bug)", ("none", "relu", "tanh"), "vae")
    # --- models -----------------------------------------------------------------------------
    model_code: str = _opt("bert", "model", MODEL_CODES, "model")
    model_init_seed: int = _opt(0, "seed of the weight initialisation", group="model")
    model_init_range: float = _opt(0.02, "std of the transformer initialisation", group="model")
    hidden_units: int = _opt(64, "transformer hidden size", group="model")
    num_blocks: int = _opt(2, "transformer blocks", group="model")
    num_heads: int = _opt(2, "attention heads (MEANTIME: heads per kernel)", group="model")
    dropout: float = _opt(0.2, "dropout", group="model")
    residual_ln_type: str = _opt("pre", "LayerNorm placement", ("pre", "post"), "model")
    headtype: str = _opt("dot", "prediction head", ("dot", "linear"), "model")
    head_use_ln: bool = _opt(False, "LayerNorm in the prediction head", group="model")
    time_unit_divide: int = _opt(1, "MEANTIME time unit", group="model")
    freq: int = _opt(10000, "MEANTIME kernel base frequency", group="model")
    tisas_max_time_intervals: int = _opt(2048, "TiSASRec interval clip", group="model")
    marank_max_len: int = _opt(6, "MARank context length", group="model")
    marank_num_att_layers: int = _opt(2, "MARank attention layers", group="model")
    marank_num_linear_layers: int = _opt(2, "MARank residual layers", group="model")
    absolute_kernel_types: str = _opt("p-d", "MEANTIME absolute kernels from p, d, c ('-'-separated)", group="model")
    relative_kernel_types: str = _opt("s-l", "MEANTIME relative kernels from s, e, l ('-'-separated)", group="model")

    # ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path, extra: dict | None = None) -> None:
        Path(path).write_text(json.dumps({**self.to_dict(), **(extra or {})}, indent=2))

    @classmethod
    def load(cls, path: Path) -> "Config":
        """Read a config.json; keys that are not options (num_users, ...) are ignored."""
        raw = json.loads(Path(path).read_text())
        names = {f.name for f in fields(cls)}
        return build_config(overrides={k: v for k, v in raw.items() if k in names}, apply_templates=False)


OPTIONS = {f.name: f for f in fields(Config)}
_TYPES = get_type_hints(Config)


def template_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("esapr.templates").iterdir() if p.name.endswith(".yaml"))


def read_template(name: str) -> dict[str, Any]:
    path = resources.files("esapr.templates") / f"{name}.yaml"
    if not path.is_file():
        p = Path(name)
        if p.suffix in (".yaml", ".yml") and p.is_file():
            path = p
        else:
            raise UserError(f"unknown template '{name}'{_nearest(name, template_names())}; "
                            f"available: {', '.join(template_names())}")
    values = yaml.safe_load(path.read_text()) or {}
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
    except (TypeError, ValueError):
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
        merged.update(_expand_templates([parents] if isinstance(parents, str) else parents, seen + (name,)))
        merged.update(values)
    return merged


def build_config(templates: list[str] | None = None, overrides: dict[str, Any] | None = None,
                 apply_templates: bool = True) -> Config:
    """defaults < templates (in order) < overrides; every value is type-checked."""
    overrides = dict(overrides or {})
    templates = list(templates or overrides.pop("templates", None) or [])
    values: dict[str, Any] = {}
    if apply_templates:
        values.update(_expand_templates(templates))
    values.update(overrides)
    values["templates"] = templates if apply_templates else values.get("templates", [])
    config = Config(**{name: coerce(name, value) for name, value in values.items()})
    if config.experiment_name is None:
        config.experiment_name = templates[-1].removeprefix("train_") if templates else config.model_code
    return config


def describe_options() -> str:
    """One line per option, for `esapr options`."""
    lines = []
    for f in fields(Config):
        choices = f.metadata["choices"]
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        extra = f" {{{'|'.join(map(str, choices))}}}" if choices else ""
        lines.append(f"  --{f.name}{extra}  (default {default!r}) {f.metadata['help']}")
    return "\n".join(lines)
