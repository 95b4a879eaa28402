"""Command line: ``esapr data stats|prepare``, ``esapr train``, ``esapr evaluate``, ``esapr results``,
``esapr recommend``, ``esapr options``.

Options are written ``--name value`` (lists: ``--metric_ks 1 5 10``; a bare ``--flag`` means true)
and go through the typed Config, so a misspelt option is rejected with the nearest valid name.
A UserError ends the program with one line on stderr and exit status 2.
"""
from __future__ import annotations

import importlib
import json
import sys
from typing import Any

from esapr.config import OPTIONS, build_config, describe_options, template_names
from esapr.errors import UserError

USAGE = """usage: esapr COMMAND [--option value ...]

commands:
  data stats     print dataset statistics (--json for JSON)
  data prepare   download, preprocess and sample negatives ahead of training
  train          train a model: esapr train --templates train_vae [--option value ...]
  evaluate       re-evaluate a saved experiment: --experiment PATH [--split val|test]
  results        table of experiments: --root ROOT [--png FILE] [--split test|val] [--curves DIR]
  recommend      top-k for a user: --experiment PATH --user ID [-k 10] (or --items ID ... for a new history)
  options        list every option with its default and help

templates: {templates}
"""


def parse_options(argv: list[str], extra: tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``--name value ...`` pairs into config overrides and command-specific flags (``extra``)."""
    overrides: dict[str, Any] = {}
    flags: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("-") or token in ("-", "--"):
            raise UserError(f"unexpected argument '{token}'; options are written --name value")
        name = token.lstrip("-")
        name, inline = (name.split("=", 1) + [None])[:2] if "=" in name else (name, None)
        values = [inline] if inline is not None else []
        i += 1
        while inline is None and i < len(argv) and not (argv[i].startswith("--") or argv[i] in ("-k",)):
            values.append(argv[i])
            i += 1
        target = flags if name in extra else overrides
        if name not in extra and name not in OPTIONS and name != "resume_training":
            from esapr.config import coerce
            coerce(name, None)  # raises: unknown option, with the nearest name
        if name == "resume_training":
            name = "resume"
        is_list = name in OPTIONS and "list" in str(OPTIONS[name].type)
        if not values and name not in extra and name in OPTIONS and "bool" not in str(OPTIONS[name].type):
            raise UserError(f"option '--{name}' needs a value (--{name} VALUE)")
        target[name] = True if not values else values if is_list or len(values) > 1 else values[0]
    return overrides, flags


def _config_from(argv: list[str], extra: tuple[str, ...] = ()):
    overrides, flags = parse_options(argv, extra)
    templates = overrides.pop("templates", [])
    if isinstance(templates, str):
        templates = [templates]
    return build_config(templates, overrides), flags


def cmd_data(argv: list[str]) -> int:
    if not argv or argv[0] not in ("stats", "prepare"):
        raise UserError("usage: esapr data stats|prepare --dataset_code CODE | --data_file PATH [--option value ...]")
    config, flags = _config_from(argv[1:], extra=("json",))
    from esapr.data.prepare import load_sequences, prepare_data  # after the options: a typo fails fast
    if argv[0] == "stats":
        sequences, folder, _ = load_sequences(config)
        stats = sequences.stats()
        if flags.get("json"):
            print(json.dumps(stats))
        else:
            print(f"dataset   {config.data_file or config.dataset_code}  (cache {folder})")
            for key, value in stats.items():
                print(f"{key:<17} {value}")
        return 0
    data = prepare_data(config)
    print(json.dumps({"cache": str(data.cache_dir), **data.sequences.stats(), **data.timings}))
    return 0


def cmd_options(argv: list[str]) -> int:
    print(describe_options())
    return 0


# name -> "module:function"; imported only when the command runs, so `esapr data` stays light.
COMMANDS: dict[str, str] = {
    "data": "esapr.cli:cmd_data",
    "options": "esapr.cli:cmd_options",
    "train": "esapr.commands:cmd_train",
    "evaluate": "esapr.commands:cmd_evaluate",
    "results": "esapr.results:cmd_results",
    "recommend": "esapr.recommend:cmd_recommend",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE.format(templates=", ".join(template_names())))
        return 0
    command = argv[0]
    if command not in COMMANDS:
        print(f"esapr: error: unknown command '{command}'; run 'esapr --help'", file=sys.stderr)
        return 2
    module, function = COMMANDS[command].split(":")
    try:
        return getattr(importlib.import_module(module), function)(argv[1:])
    except UserError as error:
        print(f"esapr: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("esapr: interrupted; the last checkpoint is kept (continue with --resume)", file=sys.stderr)
        return 130
