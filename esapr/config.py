"""One run's options: the shared groups (run, data, evaluation, training) and its family's own,
built from a flat list of ``--name value`` options and templates, checked before any I/O.

Precedence: defaults < templates (in the order given) < explicit overrides. Templates are YAML
files shipped in ``esapr/templates`` (or the user's own ``.yaml``); a template may name
``templates: [...]`` to build on others. Each name goes to the one group of the chosen family
that reads it; a name that family does not read is refused, naming the family and the option.

A run is what it reads: ``Config.identity()`` holds the options that change what the run
computes (not where it lives, how it is shown, or which metrics are reported), and a saved run
is reused, resumed or refused by comparing exactly those.
"""
from __future__ import annotations

import dataclasses
import re
import warnings
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path, PurePath
from typing import Any

import yaml

from esapr.errors import UserError
from esapr.families import FAMILIES, family
from esapr.families.base import Family, ModelOptions, NegativePool
from esapr.metrics import metric_names
from esapr.metrics import parse as parse_metric
from esapr.options.groups import DataOptions, EvalOptions, RunOptions, TrainOptions
from esapr.options.spec import check_ranges, coerce, default_of, describe_field, field_of, is_bool, nearest, short

SHARED = {"run": RunOptions, "data": DataOptions, "evaluation": EvalOptions, "training": TrainOptions}
# where each option name is declared first (its type is the same wherever it is declared)
ALL_OPTIONS: dict[str, type] = {}
for _cls in (*SHARED.values(), *(f.options for f in FAMILIES.values())):
    for _field in fields(_cls):
        ALL_OPTIONS.setdefault(_field.name, _cls)


@dataclass
class Config:
    run: RunOptions
    data: DataOptions
    evaluation: EvalOptions
    training: TrainOptions | None     # None: a closed-form family, which has no training options
    model: ModelOptions               # the family's own options

    @property
    def family(self) -> Family:
        return family(self.run.model_code)

    def groups(self) -> dict[str, Any]:
        """The option groups this run reads, by name."""
        groups = {"run": self.run, "data": self.data, "evaluation": self.evaluation, "training": self.training,
                  "model": self.model}
        return {name: group for name, group in groups.items() if group is not None}

    def values(self) -> dict[str, Any]:
        """Every option the run reads, flat (what config.json holds)."""
        return {f.name: getattr(group, f.name) for group in self.groups().values() for f in fields(group)}

    def identity(self) -> dict[str, Any]:
        """The options that change what the run computes."""
        return {f.name: getattr(group, f.name) for group in self.groups().values() for f in fields(group)
                if f.metadata["identity"]}

    def with_run(self, **changes) -> "Config":
        return dataclasses.replace(self, run=dataclasses.replace(self.run, **changes))

    @property
    def negative_pool(self) -> NegativePool | None:
        """The family's training negative pool, where it has one of size > 0."""
        pool = self.model
        return pool if isinstance(pool, NegativePool) and pool.train_negative_sample_size > 0 else None

    @property
    def seed(self) -> int:
        """The seed of training's random draws (0 for a closed-form model, which draws nothing)."""
        return self.training.dataloader_random_seed if self.training is not None else 0

    @property
    def num_epochs(self) -> int:
        """The epoch limit (-1: none; a closed-form model fits its whole grid)."""
        return self.training.num_epochs if self.training is not None else -1

    def metric_names(self) -> list[str]:
        return metric_names(self.evaluation.metric_ks, self.evaluation.full_ranking)


def owners(code: str) -> dict[str, str]:
    """Each option a family reads -> the group that owns it."""
    fam = family(code)
    classes = {**SHARED, "model": fam.options}
    if not fam.trained:
        del classes["training"]
    return {f.name: group for group, cls in classes.items() for f in fields(cls)}


def readers(name: str) -> list[str]:
    """The families that read option ``name``."""
    return [code for code in FAMILIES if name in owners(code)]


TEMPLATE_BYTES = 1 << 20


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
            raise UserError(f"unknown template '{name}'{nearest(name, template_names())}; available: "
                            f"{', '.join(template_names())} (your own template: a path ending in .yaml)")
    try:
        text = path.read_bytes()
        if len(text) > TEMPLATE_BYTES:
            raise UserError(f"template '{name}' is {len(text):,} bytes; a template of options is far smaller "
                            f"(at most {TEMPLATE_BYTES:,})")
        values = yaml.safe_load(text.decode())
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


def _expand_templates(names: list[str], seen: tuple = ()) -> tuple[dict[str, Any], dict[str, str]]:
    """The templates' values merged in order, and the template that set each."""
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name in names:
        if name in seen:
            raise UserError(f"template '{name}' includes itself")
        values = read_template(name)
        parents = values.pop("templates", [])
        parents = [parents] if isinstance(parents, str) else parents
        if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
            raise UserError(f"template '{name}': 'templates' must be a template name or a list of them, "
                            f"got {short(parents)}")
        for key in values:
            if not isinstance(key, str) or key not in ALL_OPTIONS:
                raise UserError(f"template '{name}': unknown option {short(key)}{nearest(str(key), ALL_OPTIONS)}")
        inherited, inherited_origin = _expand_templates(parents, seen + (name,))
        merged.update(inherited)
        origin.update(inherited_origin)
        merged.update(values)
        origin.update({key: name for key in values})
    return merged, origin


def template_values(templates: list[str]) -> dict[str, Any]:
    return _expand_templates(templates)[0]


def build_config(templates: list[str] | None = None, overrides: dict[str, Any] | None = None,
                 apply_templates: bool = True) -> Config:
    """defaults < templates (in order) < overrides; every value is routed to its group,
    type-checked and validated."""
    overrides = dict(overrides or {})
    templates = coerce(RunOptions, "templates", templates or overrides.pop("templates", None) or [])
    values, origin = {}, {}
    if apply_templates:
        _warn_mixed_models(templates)
        values, origin = _expand_templates(templates)
    values.update(overrides)
    values["templates"] = templates
    for name in overrides:
        origin.pop(name, None)
    code = coerce(RunOptions, "model_code", values.get("model_code"))
    if code is None:
        raise UserError("no model chosen: name a template (--templates train_vae; `esapr --help` lists them) "
                        "or a family (--model_code vae)")
    fam = family(code)
    owner = owners(fam.code)
    for name in values:
        if name not in owner:
            raise _not_read(name, fam, origin.get(name))
    parts: dict[str, dict[str, Any]] = {group: {} for group in set(owner.values())}
    classes = {**SHARED, "model": fam.options}
    for name, value in values.items():
        parts[owner[name]][name] = coerce(classes[owner[name]], name, value)
    config = Config(run=RunOptions(**parts["run"]), data=DataOptions(**parts["data"]),
                    evaluation=EvalOptions(**parts["evaluation"]),
                    training=TrainOptions(**parts["training"]) if fam.trained else None,
                    model=fam.options(**parts["model"]))
    if config.run.experiment_name is None:
        config.run.experiment_name = PurePath(templates[-1]).stem.removeprefix("train_") if templates else fam.code
    if config.run.pilot and "experiment_name" not in overrides and apply_templates:
        config.run.experiment_name += "_pilot"      # a pilot run never takes the real run's folder
    if config.run.experiment_group is None:
        config.run.experiment_group = _data_group(config.data)
    validate(config)
    return config


def build_data_options(overrides: dict[str, Any]) -> DataOptions:
    """The data options alone (for the data commands, which train no model)."""
    names = [f.name for f in fields(DataOptions)]   # in declaration order, for the message
    for name in overrides:
        if name not in names:
            raise UserError(f"option '{name}' is not a data option; without a template this command takes "
                            f"{', '.join('--' + n for n in names)}{nearest(name, names)}")
    options = DataOptions(**{name: coerce(DataOptions, name, value) for name, value in overrides.items()})
    check_ranges(options)
    if options.dataset_code is None and not options.data_file:
        raise UserError("no data: set --dataset_code or --data_file")
    return options


def _not_read(name: str, fam: Family, template: str | None) -> UserError:
    if name not in ALL_OPTIONS:
        return UserError(f"unknown option '{name}'{nearest(name, ALL_OPTIONS)}")
    where = f" (set by template '{template}')" if template else ""
    others = readers(name)
    read_by = f"; it is read by {', '.join(others)}" if others else ""
    return UserError(f"option '{name}'{where} is not read by model '{fam.code}' ({fam.label}){read_by}: "
                     f"drop it, or choose a model that reads it")


def _data_group(data: DataOptions) -> str:
    """The default experiment group: the dataset, or the data file's name without its suffix."""
    if not data.data_file:
        return data.dataset_code
    stem = PurePath(data.data_file).stem
    if not _is_safe_component(stem):
        raise UserError(f"the data file's name {PurePath(data.data_file).name!r} makes no folder name for its "
                        f"experiments; pass --experiment_group NAME")
    return stem


def _warn_mixed_models(templates: list[str]) -> None:
    codes = {name: template_values([name]).get("model_code") for name in templates}
    named = {name: str(code) for name, code in codes.items() if code is not None}
    if len(set(named.values())) > 1:
        last = list(named.values())[-1]
        warnings.warn(f"the templates set different model_code values ("
                      f"{', '.join(f'{n}: {c}' for n, c in named.items())}); the last one wins: {last}", stacklevel=3)


def _field(code: str, name: str) -> dataclasses.Field:
    group = owners(code)[name]
    return field_of(family(code).options if group == "model" else SHARED[group], name)


def config_differences(saved: dict, config: Config, ignore: frozenset = frozenset()) -> list[tuple[str, Any, Any]]:
    """(option, saved value, requested value) for each identity option of ``config`` whose value
    differs from a saved run's config.json (an option the file lacks counts as its default;
    options the file holds that this family does not read are not compared)."""
    code = config.run.model_code
    differences = []
    for name, value in config.identity().items():
        if name in ignore:
            continue
        before = saved.get(name, default_of(_field(code, name)))
        if before != value:
            differences.append((name, before, value))
    return differences


_told_assumed: set[str] = set()


def warn_assumed_defaults(saved: dict, config: Config, where, given: frozenset[str] = frozenset()) -> None:
    """Say once per run (``where``: its folder) which identity options its config.json lacks (an
    older version's run): they are read as today's defaults, and a run trained with other values
    scores differently. Options ``given`` anew are not assumed; data options are checked through the
    run's data fingerprint where it has one."""
    code = config.run.model_code
    data = {f.name for f in fields(DataOptions)} if "data_fingerprint" in saved else set()
    missing = [_field(code, name) for name in config.identity() if name not in saved and name not in data | given]
    assumed = {f.name: default_of(f) for f in missing if not f.metadata["default_as_before"]}
    if not assumed or str(where) in _told_assumed:
        return
    _told_assumed.add(str(where))
    if len(assumed) == 1:
        (name, value), = assumed.items()
        what = f"{name}: read as {short(value)}, today's default; a run trained with another value"
    else:
        values = ", ".join(f"{name}={short(value)}" for name, value in assumed.items())
        what = f"{', '.join(assumed)}: read as {values}, today's defaults; a run trained with other values"
    warnings.warn(f"{Path(where) / 'config.json'} has no {what} scores differently", stacklevel=2)


def describe_differences(differences: list[tuple[str, Any, Any]]) -> str:
    return ", ".join(f"{name} (saved {before!r}, now {now!r})" for name, before, now in differences)


# a resume runs for the epochs it is asked for (--num_epochs extends or caps a run; the epochs already
# run do not depend on it), and may find the data elsewhere (its fingerprint is checked)
RESUME_EPOCHS, RESUME_DATA = frozenset({"num_epochs"}), frozenset({"data_file", "data_url"})
# run-only options a resume keeps from the saved run unless the request names them
RESUME_NAMING = frozenset({"templates", "model_label", "metric_ks"})


def given_options(templates: list[str], overrides: dict[str, Any]) -> frozenset[str]:
    """The options a command line sets: those given directly and those its templates set."""
    names = set(overrides) | set(template_values(templates))
    return frozenset(names | {"templates"} if templates else names)


def resumed_config(saved: dict, requested: Config, path, given: frozenset[str] | None = None) -> Config:
    """The saved run's options, with the run-only options from the request, and num_epochs and
    the data's location where the request sets them. ``given`` names the options the user set
    (None: every option of ``requested`` that is not its default counts as set, and num_epochs is
    always the request's). A set option that differs from the saved run is an error naming each
    such option with both values."""
    code = requested.run.model_code
    read = requested.values()

    def is_given(name: str) -> bool:
        return name in given if given is not None else read[name] != default_of(_field(code, name))

    warn_assumed_defaults(saved, requested, path, RESUME_EPOCHS)
    differences = config_differences(saved, requested, RESUME_EPOCHS | RESUME_DATA)
    asked = [(name, before, now) for name, before, now in differences if is_given(name)]
    if asked:
        raise UserError(f"{path}: --resume with options that differ from the saved run: "
                        f"{describe_differences(asked)}; drop them to continue the run as it was, "
                        f"or start a new experiment")
    run_only = set(read) - set(requested.identity()) - RESUME_NAMING
    options = {name: saved[name] for name in read if name in saved}
    options.update({name: read[name] for name in run_only})
    taken = RESUME_NAMING | RESUME_DATA | (RESUME_EPOCHS if given is not None else frozenset())
    options.update({name: read[name] for name in taken & set(read) if is_given(name)})
    if given is None and "num_epochs" in read:
        options["num_epochs"] = read["num_epochs"]
    return build_config(overrides=options, apply_templates=False)


def saved_config(saved: dict, **overrides) -> Config:
    """The Config of a saved run's config.json (of any version: options its family does not read
    are left out), with ``overrides``."""
    code = overrides.get("model_code", saved.get("model_code"))
    if code not in FAMILIES:
        raise UserError(f"model_code {code!r} is not a family of this version ({', '.join(FAMILIES)})")
    read = owners(code)
    options = {name: value for name, value in saved.items() if name in read}
    options.update(overrides)
    if "metric_ks" in overrides and "best_metric" in options:     # the run's own metric is always computed
        _, k, _ = parse_metric(str(options["best_metric"]))
        ks = coerce(EvalOptions, "metric_ks", overrides["metric_ks"])
        options["metric_ks"] = ks + [k] if k and k not in ks else ks
    return build_config(overrides=options, apply_templates=False)


def python_words(message: str) -> str:
    """A message as the Python API's user acts on it: each option's ``--name`` (a CLI flag) as its
    keyword argument (``--overwrite`` -> ``overwrite=True``, ``--num_epochs N`` -> ``num_epochs=N``,
    ``--experiment_name`` -> ``experiment_name``); other words stay."""
    def keyword(match: re.Match) -> str:
        name, value = match.group(1), match.group(2)
        if name not in ALL_OPTIONS:
            return match.group(0)
        if is_bool(ALL_OPTIONS[name], name):
            return f"{name}=True{value or ''}"
        return f"{name}={value.strip()}" if value else name
    return re.sub(r"--(\w+)( [A-Z]+\b)?", keyword, message)


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
    for group in config.groups().values():
        check_ranges(group)
    evaluation = config.evaluation
    if not evaluation.metric_ks:
        raise UserError("option 'metric_ks' is empty; give at least one cut-off, e.g. --metric_ks 1 5 10")
    names = config.metric_names()
    if evaluation.best_metric not in names:
        raise UserError(f"option 'best_metric' is {evaluation.best_metric!r}, which is not computed"
                        f"{nearest(evaluation.best_metric, names)}; choose one of {', '.join(names)}")
    _safe_component("experiment_group", config.run.experiment_group)
    _safe_component("experiment_name", config.run.experiment_name)
    if config.data.dataset_code is None and not config.data.data_file:
        raise UserError("no data: set --dataset_code or --data_file")
    if config.run.resume and config.run.overwrite:
        raise UserError("option 'resume' and option 'overwrite' are both set; choose one: --resume continues the "
                        "saved run, --overwrite replaces it")
    config.family.check(config.model)


def describe_options(config: Config | None = None, groups: tuple[str, ...] | None = None) -> str:
    """Help lines: a run's options with their values, or every option with its default: the
    shared groups (``groups``: which of them; None: all), then each family's own."""
    if config is not None:
        return "\n".join(describe_field(f, getattr(group, f.name))
                         for group in config.groups().values() for f in fields(group))
    lines = []
    for name, cls in SHARED.items():
        if groups is None or name in groups:
            lines += [f"{name}:" + (" (families trained by steps)" if name == "training" else "")]
            lines += [describe_field(f) for f in fields(cls)]
    if groups is None or "model" in groups:
        for code, fam in FAMILIES.items():
            lines += [f"{code} ({fam.label}):"] + [describe_field(f) for f in fields(fam.options)]
    return "\n".join(lines)
