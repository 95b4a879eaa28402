"""How an option is declared: a dataclass field with its help, allowed values and whether it is
part of a run's identity; and how a CLI string or YAML value becomes the field's type.

Every options dataclass (the shared groups and each family's) is written with ``option(...)``,
so its fields carry what ``--help``, validation and run identity need, next to the code that
reads them."""
from __future__ import annotations

import dataclasses
import difflib
import math
import reprlib
from dataclasses import dataclass, field, fields
from functools import cache
from typing import Any, get_args, get_origin, get_type_hints

from esapr.errors import UserError


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


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 6, 6, 60, 60
ANY_NUMBER, AT_LEAST_0, AT_LEAST_1, POSITIVE = Range(), Range(0), Range(1), Range(0, low_open=True)
# sizes that allocate memory in proportion (or in square): far beyond any real dataset, low enough
# that a mistyped value is refused here instead of by the memory allocator
SIZE, SEED = Range(1, 10**7), Range(0, 2**63 - 1)
FRACTION, PROBABILITY = Range(0, 1, high_open=True), Range(0, 1)


def option(default, help: str, choices: tuple | None = None, valid: Range | None = None, identity: bool = True,
           path: bool = False, default_as_before: bool = False):
    """A field of an options dataclass. ``identity=False``: the option does not change what a run
    computes (where it is saved, how it is shown or evaluated), so a saved run is the same run
    whatever its value. ``path``: a file or folder name, which may hold any bytes the file system
    allows; other text must be valid text (UTF-8). ``default_as_before``: added after runs were
    saved without it, with a default that does what they did, so reading them with it is no doubt."""
    metadata = {"help": help, "choices": choices, "valid": valid, "identity": identity, "path": path,
                "default_as_before": default_as_before}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


@cache
def type_hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def nearest(name: str, candidates) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def is_list(cls: type, name: str) -> bool:
    return get_origin(_base(type_hints(cls)[name])) is list


def is_bool(cls: type, name: str) -> bool:
    return _base(type_hints(cls)[name]) is bool


def _base(hint):
    args = get_args(hint)
    if args and get_origin(hint) is not list:
        return next((a for a in args if a is not type(None)), hint)
    return hint


def _parse_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("yes", "true", "t", "y", "1"):
        return True
    if text in ("no", "false", "f", "n", "0"):
        return False
    raise UserError(f"option '{name}' expects true/false, got '{value}'")


def _scalar(kind: type, name: str, value: Any):
    """One value as ``kind``; integers stay exact (no trip through float) and are never truncated."""
    if isinstance(value, (list, tuple, dict, set)) or (kind is not str and value is None):
        raise ValueError
    if kind is bool:
        return _parse_bool(name, value)
    if kind is int:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError
            return int(value)
        text = str(value).strip()
        try:
            return int(text)
        except ValueError:
            number = float(text)            # "1e3" is a whole number; "1.5" is not
            if not number.is_integer() or abs(number) >= 2**53:
                raise
            return int(number)
    if kind is float:
        return float(value)
    return str(value)


def short(value: Any, limit: int = 80) -> str:
    """A value as a message shows it: quoted, one line, at most ``limit`` characters (a huge or
    deeply nested value is never written out whole)."""
    text = _REPR.repr(value) if not isinstance(value, str) else f"'{value[:limit]}'"
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def coerce(cls: type, name: str, value: Any) -> Any:
    """A CLI string or YAML value as the type of ``cls``'s field ``name``, or a UserError."""
    hint = type_hints(cls)[name]
    optional = type(None) in get_args(hint)
    if optional and (value is None or (isinstance(value, str) and value.lower() in ("none", "null", ""))):
        return None
    base = _base(hint)
    listed = get_origin(base) is list
    item_type = get_args(base)[0] if listed else base
    try:
        if listed:
            items = value if isinstance(value, (list, tuple)) else str(value).replace(",", " ").split()
            result = [_scalar(item_type, name, v) for v in items]
        else:
            if isinstance(value, (list, tuple, dict, set)):
                raise ValueError
            result = _scalar(base, name, value)
    except (TypeError, ValueError, OverflowError):
        kind = f"a list of {item_type.__name__}" if listed else f"one {getattr(base, '__name__', base)}"
        raise UserError(f"option '{name}' expects {kind}, got {short(value)}") from None
    if not field_of(cls, name).metadata["path"] and any(isinstance(v, str) and not _is_text(v)
                                                        for v in (result if listed else [result])):
        raise UserError(f"option '{name}' holds bytes that are not UTF-8 text ({short(result)}); type it in a "
                        f"UTF-8 terminal or file")
    choices = field_of(cls, name).metadata["choices"]
    if choices and result not in choices:
        raise UserError(f"option '{name}' must be one of {', '.join(map(str, choices))}, "
                        f"got {short(result)}{nearest(str(result), map(str, choices))}")
    return result


def _is_text(value: str) -> bool:
    """No undecodable bytes (which Python keeps as lone surrogates) in ``value``."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def field_of(cls: type, name: str) -> dataclasses.Field:
    return {f.name: f for f in fields(cls)}[name]


def check_ranges(options) -> None:
    """Every numeric value of an options dataclass within its declared Range."""
    for f in fields(options):
        valid: Range | None = f.metadata.get("valid")
        value = getattr(options, f.name)
        if valid is None or value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            if not valid.allows(item):
                raise UserError(f"option '{f.name}' is {short(value)}; allowed: {valid.describe()}")


def require(ok: bool, option: str, value: Any, allowed: str) -> None:
    """A family's or a group's own rule: one line naming the option, its value and what is allowed."""
    if not ok:
        raise UserError(f"option '{option}' is {value!r}; {allowed}")


def describe_field(f: dataclasses.Field, value: Any = dataclasses.MISSING) -> str:
    """One help line: --name {choices} (default or value) help."""
    choices = f.metadata["choices"]
    shown = f"default {default_of(f)!r}" if value is dataclasses.MISSING else f"value {value!r}"
    extra = f" {{{'|'.join(map(str, choices))}}}" if choices else ""
    return f"  --{f.name}{extra}  ({shown}) {f.metadata['help']}"
