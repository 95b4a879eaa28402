"""A search's space: the family's ``SPACE`` (``esapr/families/<code>.py``), changed by the user's
YAML file (``--space``), less the options the command line fixes; every entry checked against
the option's own declared range and choices; and a trial's drawn values as the options of one run.

A list option searched with one value is a list of that value: an EASE trial sets
``ease_lambdas: [λ]``, a grid of one setting, so a closed-form model's own grid and its space are
the same options, not two mechanisms to keep in step. The YAML file::

    lr: {low: 0.0005, high: 0.005, log: true}   # a range (whole numbers for a whole-number option)
    weight_type: [exp_stair, constant]          # choices
    dropout: null                               # not searched: the template's value
    replace: true                               # optional: the file is the whole space
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, get_args, get_origin

import yaml

from esapr.config import SHARED, owners, template_values
from esapr.errors import UserError
from esapr.families import family
from esapr.families.base import Choice, Floats, Ints, Space
from esapr.options.spec import coerce, field_of, nearest, short, type_hints

SPACE_BYTES = 1 << 16


def option_class(code: str, name: str) -> type:
    """The options dataclass of family ``code`` that declares ``name``."""
    group = owners(code)[name]
    return family(code).options if group == "model" else SHARED[group]


def _kind(cls: type, name: str) -> type:
    """The scalar type of an option (of each element, for a list option)."""
    hint = type_hints(cls)[name]
    if get_origin(hint) is not list:
        hint = next((a for a in get_args(hint) if a is not type(None)), hint)
    return get_args(hint)[0] if get_origin(hint) is list else hint


def check_entry(code: str, name: str, entry: Floats | Ints | Choice, where: str) -> None:
    """One entry: an option the family reads, of its kind, inside its declared range and choices."""
    read = owners(code)
    if name not in read:
        raise UserError(f"{where}: option '{name}' is not read by model '{code}' ({family(code).label})"
                        f"{nearest(name, read)}; search only options it reads")
    cls = option_class(code, name)
    kind = _kind(cls, name)
    if isinstance(entry, Choice):
        values = entry.values
        if len(values) < 2:
            raise UserError(f"{where}: '{name}' offers {len(values)} choice(s); give at least two, or fix the "
                            f"option with --{name} VALUE")
    else:
        want = {Floats: float, Ints: int}[type(entry)]
        if kind is not want or isinstance(entry.low, bool):
            how = {int: "whole numbers; search it with whole-number bounds", float: "numbers; search it with a "
                   "range of numbers"}.get(kind, f"{kind.__name__} values; search it with choices")
            raise UserError(f"{where}: '{name}' takes {how}")
        if not entry.low < entry.high:
            raise UserError(f"{where}: '{name}' has low {entry.low!r} and high {entry.high!r}; low must be below high")
        if entry.log and entry.low <= 0:
            raise UserError(f"{where}: '{name}' is searched on a log scale from {entry.low!r}; a log range starts "
                            f"above 0")
        values = (entry.low, entry.high)
    valid = field_of(cls, name).metadata["valid"]
    for value in values:
        try:
            coerce(cls, name, value)
        except UserError as error:
            raise UserError(f"{where}: {error}") from None
        if valid is not None and not isinstance(value, str) and not valid.allows(value):
            raise UserError(f"{where}: '{name}' reaches {value!r}, outside the option's range ({valid.describe()})")


def check_space(code: str, space: Space, where: str) -> None:
    for name, entry in space.items():
        check_entry(code, name, entry, where)


def read_space_file(path: str | Path) -> tuple[dict[str, Any], bool]:
    """A --space file: {option: range | choices | None} and whether it replaces the whole space."""
    path = Path(path)
    try:
        text = path.read_bytes()
        if len(text) > SPACE_BYTES:
            raise UserError(f"{path}: {len(text):,} bytes; a search space is far smaller (at most {SPACE_BYTES:,})")
        values = yaml.safe_load(text.decode()) or {}
    except OSError as error:
        raise UserError(f"{path}: the space file cannot be read ({error.strerror or error})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not a YAML space file ({str(error).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: a space file maps option names to ranges or choices (see esapr tune --help)")
    replace = values.pop("replace", False)
    if not isinstance(replace, bool):
        raise UserError(f"{path}: 'replace' is true or false, got {short(replace)}")
    return values, replace


def parse_entry(code: str, name: str, value: Any, where: str) -> Floats | Ints | Choice:
    """A space file's entry as the option's kind of range or choices."""
    if isinstance(value, list):
        return Choice(*value)
    if not isinstance(value, dict) or not {"low", "high"} <= set(value) or set(value) - {"low", "high", "log"}:
        raise UserError(f"{where}: '{name}' is {short(value)}; write {{low: A, high: B}} (log: true for a log "
                        f"scale), a list of choices, or null")
    log = value.get("log", False)
    if not isinstance(log, bool):
        raise UserError(f"{where}: '{name}' has log {short(log)}; write true or false")
    if name in owners(code) and _kind(option_class(code, name), name) is int:
        low, high = value["low"], value["high"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)):
            raise UserError(f"{where}: '{name}' takes whole numbers, got low {short(low)} and high {short(high)}")
        return Ints(low, high, log)
    try:
        return Floats(float(value["low"]), float(value["high"]), log)
    except (TypeError, ValueError):
        raise UserError(f"{where}: '{name}' needs numbers for low and high, got {short(value['low'])} and "
                        f"{short(value['high'])}") from None


def model_code(template: str, overrides: dict[str, Any]) -> str:
    code = overrides.get("model_code", template_values([template]).get("model_code"))
    if code is None:
        raise UserError(f"template '{template}' names no model_code")
    family(str(code))
    return str(code)


def search_spaces(templates: list[str], overrides: dict[str, Any],
                  space_file: str | Path | None = None) -> dict[str, Space]:
    """Each template's space: its family's, changed by the file, without the options given (they
    are fixed). A file entry that no template's family reads is refused, and so is a space left
    empty."""
    codes = {template: model_code(template, overrides) for template in templates}
    spaces = {template: dict(family(code).space) for template, code in codes.items()}
    if space_file is not None:
        entries, replace = read_space_file(space_file)
        read = {name for code in codes.values() for name in owners(code)}
        unread = [name for name in entries if name not in read]
        if unread:
            raise UserError(f"{space_file}: option '{unread[0]}' is read by none of the templates "
                            f"{', '.join(templates)}{nearest(str(unread[0]), read)}")
        for template, code in codes.items():
            if replace:
                spaces[template] = {}
            for name, value in entries.items():
                if name not in owners(code):
                    continue
                if value is None:
                    spaces[template].pop(name, None)
                else:
                    spaces[template][name] = parse_entry(code, name, value, str(space_file))
    for template, code in codes.items():
        check_space(code, spaces[template], str(space_file or f"the space of model '{code}'"))
        spaces[template] = {name: entry for name, entry in spaces[template].items() if name not in overrides}
        if not spaces[template]:
            given = [name for name in family(code).space if name in overrides]
            if not given:
                raise UserError(f"nothing to search for {template}: model '{code}' declares no search space (SPACE "
                                f"in esapr/families/{code}.py); give --space FILE")
            raise UserError(f"nothing to search for {template}: every option of its space is fixed "
                            f"({', '.join(given)}); drop one of those options or give --space FILE")
    return spaces


def suggest(trial, space: Space) -> dict[str, Any]:
    """The trial's values for ``space`` (an Optuna trial; a retried trial gets its fixed values)."""
    for name, entry in space.items():
        if isinstance(entry, Floats):
            trial.suggest_float(name, entry.low, entry.high, log=entry.log)
        elif isinstance(entry, Ints):
            trial.suggest_int(name, entry.low, entry.high, log=entry.log)
        else:
            trial.suggest_categorical(name, list(entry.values))
    return {name: trial.params[name] for name in space}


def start_values(space: Space, values: dict[str, Any]) -> dict[str, Any]:
    """The run's value of each searched option that the space can draw (a list of one value as
    that value; a grid, or a value outside a range, is left to the sampler): a new study's first
    trial, so a search starts from the template's settings, the papers' choices."""
    start = {}
    for name, entry in space.items():
        value = values.get(name)
        if isinstance(value, (list, tuple)):
            if len(value) != 1:
                continue
            value = value[0]
        if isinstance(entry, Choice):
            drawable = any(type(value) is type(choice) and value == choice for choice in entry.values)
        else:
            kinds = (int,) if isinstance(entry, Ints) else (int, float)
            drawable = isinstance(value, kinds) and not isinstance(value, bool) and entry.low <= value <= entry.high
        if drawable:
            start[name] = value
    return start


def as_options(code: str, params: dict[str, Any]) -> dict[str, Any]:
    """Drawn values as run options: a list option gets a list of its one value."""
    return {name: coerce(option_class(code, name), name, value) for name, value in params.items()}


def to_json(space: Space) -> dict[str, Any]:
    """The space as plain values (saved with the study; compared when it is continued)."""
    return {name: {"choices": list(e.values)} if isinstance(e, Choice) else
            {"kind": "int" if isinstance(e, Ints) else "float", "low": e.low, "high": e.high, "log": e.log}
            for name, e in space.items()}


def from_json(values: dict[str, Any]) -> Space:
    return {name: Choice(*v["choices"]) if "choices" in v else
            (Ints if v["kind"] == "int" else Floats)(v["low"], v["high"], v["log"]) for name, v in values.items()}


def describe(entry: dict[str, Any] | None) -> str:
    """A saved entry in words: 0.0001..0.01 (log), or one of a, b."""
    if entry is None:
        return "not searched"
    if "choices" in entry:
        return "one of " + ", ".join(map(str, entry["choices"]))
    return f"{entry['low']:g}..{entry['high']:g}{' (log)' if entry['log'] else ''}"


def space_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """"'lr' (saved 0.0001..0.01 (log), now 0.001..0.01 (log))" for each entry that differs."""
    return [f"'{name}' (saved {describe(saved.get(name))}, now {describe(now.get(name))})"
            for name in dict.fromkeys([*saved, *now]) if saved.get(name) != now.get(name)]

