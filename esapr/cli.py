"""Command line: ``esapr data stats|prepare``, ``esapr train``, ``esapr evaluate``, ``esapr results``,
``esapr compare``, ``esapr tune``, ``esapr recommend``, ``esapr options``: the parser, the command table and
``main``; the handlers are in ``esapr.commands``.

Options are written ``--name value`` (lists: ``--metric_ks 1 5 10``; a bare ``--flag`` means true)
and go through the typed Config, so a misspelt option is rejected with the nearest valid name.
A UserError ends the program with one line on stderr and exit status 2.
"""
from __future__ import annotations

import errno
import importlib
import os
import signal
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any

from esapr.config import ALL_OPTIONS, describe_options, template_names
from esapr.errors import Interrupted, UserError, first_line
from esapr.families import FAMILIES
from esapr.options.spec import is_bool, is_list, nearest


@dataclass(frozen=True)
class Command:
    name: str
    target: str                         # "module:function", imported only when the command runs
    summary: str
    usage: str
    flags: dict[str, str] = field(default_factory=dict)   # the command's own --flags and their help
    option_groups: tuple[str, ...] | None = ()            # option groups its help lists (None: all)
    options: tuple[str, ...] | None = None                # the only options it takes (None: any)


# the options of a command that reads a saved run: where its data is now, and where to compute
SAVED_RUN_OPTIONS = ("data_file", "local_data_folder", "data_url", "device")
SAVED_RUN_HELP = {"data_file": "where the run's own data file is now (default: where the run recorded it)",
                  "local_data_folder": "where the dataset's raw files and caches are now (default: where the run "
                                       "recorded them)",
                  "data_url": "a mirror to download the dataset from, if it is nowhere on this machine",
                  "device": "where to compute: auto, cpu or cuda (default cpu)"}
# command flags that are switches (a bare --flag); every other flag takes a value
SWITCHES = frozenset({"json", "quiet", "dry_run", "aggregate_only", "tuned", "pareto"})
# command flags that take several values; every other flag and every option that is not a list takes one
LIST_FLAGS = frozenset({"root", "items", "metrics", "seeds", "templates"})
COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("data", "esapr.commands:cmd_data", "dataset statistics, or download + preprocess + negatives ahead of time",
            "esapr data stats|prepare --dataset_code CODE | --data_file PATH [--option value ...]",
            {"json": "print statistics as JSON"}, ("data",)),
    Command("train", "esapr.commands:cmd_train", "train a model and test its best weights",
            "esapr train --templates train_vae [--option value ...]",
            {"quiet": "print only errors and the final metrics"}, None),
    Command("evaluate", "esapr.commands:cmd_evaluate", "re-evaluate a saved experiment (writes nothing)",
            "esapr evaluate --experiment PATH [--split val|test] [--json] [--data_file F | --local_data_folder D]",
            {"experiment": "the experiment folder", "split": "val or test (default test)",
             "json": "print the metrics as JSON"}, (),
            SAVED_RUN_OPTIONS + ("metric_ks", "val_batch_size", "test_batch_size")),
    Command("results", "esapr.commands:cmd_results", "a table of finished experiments (and figures)",
            "esapr results [--root ROOT ...] [--png FILE] [--split test|val] [--curves DIR] [--metrics M ...]",
            {"root": "experiment folders or roots to search (default: experiments)", "png": "save the table figure",
             "split": "test or val (default test)", "curves": "save each experiment's learning curves here",
             "metrics": "the metric columns, in order", "digits": "decimals shown (default 4)"}),
    Command("compare", "esapr.commands:cmd_compare",
            "train templates x seeds, then a table with intervals and paired tests (reuses finished runs)",
            "esapr compare --templates train_vae train_sas ... [--seeds 0 1 2 3 4] [--jobs N] "
            "[--dry_run | --aggregate_only] [--tuned] [--option value ...]",
            {"seeds": "seeds of the runs; each sets the seed options its template's family reads "
                      "(model_init_seed, dataloader_random_seed, train_negative_sampling_seed; default 0 1 2 3 4); "
                      "a template written train_meantime:1 runs only the first 1 of them",
             "jobs": "train this many runs at once, each with cores/N threads (default 1)",
             "dry_run": "print each run's esapr train command (to send to a scheduler); train nothing",
             "aggregate_only": "train nothing; aggregate the runs already in their folders",
             "output": "prefix of the table files, or a folder to write them in (default "
                       "<experiment_root>/<experiment_group>/comparison_<hash of the template set>: .csv, .json, "
                       ".md, .png)",
             "metrics": "the metrics shown in the printed table and the figure (default NDCG@10 Recall@10 "
                        "NDCG@20 Recall@20 MRR; the CSV and JSON hold all)",
             "tuned": "each template's best settings from esapr tune (<experiment_root>/<experiment_group>/tune/"
                      "<template>/best.yaml) where its study left them; said per template",
             "pareto": "also the Pareto picture: test NDCG@10 (or the first of --metrics) on both protocols against "
                       "training time per run, with its table (<output>_pareto.png, .csv, .md)",
             "quiet": "print only the table"}, None),
    Command("tune", "esapr.commands:cmd_tune",
            "search each template's hyper-parameters with Optuna on validation, the same budget for each",
            "esapr tune --templates T [T ...] --trials N and/or --hours H [--jobs N] [--storage URL] [--space FILE] "
            "[--sampler tpe|random] [--option value ...]",
            {"trials": "budget per template: this many complete or pruned trials",
             "hours": "budget per template: this many hours of training (checked before each trial starts); with "
                      "--trials, whichever comes first",
             "jobs": "worker processes, each with cores/N threads (default 1); machines running the same command "
                     "on one --storage share the work",
             "storage": "a database URL (postgresql://user@host/db, sqlite:///file.db) or a journal file (default "
                        "<experiment_root>/<experiment_group>/tune/<template>/study.log, which Google Drive keeps)",
             "space": "a YAML file changing the families' search spaces: option: {low: A, high: B, log: true} or "
                      "[choices] or null (not searched); replace: true makes it the whole space",
             "sampler": "tpe (default) or random",
             "seed": "seed of the sampler (default 0); trial k draws with (seed, k)",
             "quiet": "no progress bars: only the trials and the result"}, None),
    Command("recommend", "esapr.commands:cmd_recommend", "top-k items for a user or a new history",
            "esapr recommend --experiment PATH (--user ID | --items ID ...) [-k 10] [--json] "
            "[--data_file F | --local_data_folder D]",
            {"experiment": "the experiment folder", "user": "a known user's id", "items": "a new history of item ids "
             "(oldest first)", "k": "how many items (default 10)", "json": "print JSON records"}, (),
            SAVED_RUN_OPTIONS),
    Command("options", "esapr.commands:cmd_options", "every option with its help and default (or the templates' values)",
            "esapr options [--templates NAME ...]", {"templates": "show the values these templates give"}),
)}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: esapr COMMAND [--option value ...]   (esapr COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {c.name:<{width}}  {c.summary}" for c in COMMANDS.values()]
    lines += ["", f"templates: {', '.join(template_names())}", f"models:    {', '.join(FAMILIES)}"]
    return "\n".join(lines)


def command_help(command: Command) -> str:
    lines = [f"usage: {command.usage}", "", command.summary]
    if command.flags:
        lines += ["", "flags:"] + [f"  --{name}  {text}" for name, text in command.flags.items()]
    if command.options is not None:
        from esapr.options.spec import describe_field, field_of
        lines += ["", "options:"] + [f"  --{name}  {SAVED_RUN_HELP[name]}" if name in SAVED_RUN_HELP else
                                     describe_field(field_of(ALL_OPTIONS[name], name)) for name in command.options]
    elif command.option_groups is None or command.option_groups:
        lines += ["", "options (defaults < templates in order < options given; each family reads the shared "
                      "groups and its own):", describe_options(groups=command.option_groups)]
    return "\n".join(lines)


def parse_options(argv: list[str], extra: tuple[str, ...] = (),
                  allowed: tuple[str, ...] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``--name value ...`` pairs into config overrides and command-specific flags
    (``extra``); ``allowed``: the only options the command takes (None: any option)."""
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
        if name == "resume_training":
            name = "resume"
        target = flags if name in extra else overrides
        if name not in extra:
            known = ALL_OPTIONS if allowed is None else allowed
            if name not in known:
                takes = "" if allowed is None else f"; this command takes {', '.join('--' + n for n in (*extra, *allowed))}"
                raise UserError(f"unknown option '--{name}'{nearest(name, [*extra, *known])}{takes}")
        listed = name in LIST_FLAGS if name in extra else name in ALL_OPTIONS and is_list(ALL_OPTIONS[name], name)
        switch = name in SWITCHES if name in extra else name in ALL_OPTIONS and is_bool(ALL_OPTIONS[name], name)
        if not values and not switch:
            raise UserError(f"option '--{name}' needs a value (--{name} VALUE)")
        if len(values) > 1 and not listed:
            raise UserError(f"option '--{name}' takes one value, got {len(values)} ({' '.join(values[:3])}"
                            f"{' ...' if len(values) > 3 else ''}); quote a value that holds spaces, and check "
                            f"that a * did not expand to several files")
        target[name] = True if not values else values if listed else values[0]
    return overrides, flags


_WRITABLE = "choose a folder you may write to (--experiment_root, --local_data_folder or the output path)"
_OS_ADVICE = {
    errno.ENOSPC: "the disk is full: free some space and run the command again (nothing saved was lost; a "
                  "training run continues with --resume)",
    errno.EDQUOT: "the disk quota is used up: free some space and run the command again (a training run "
                  "continues with --resume)",
    errno.EACCES: f"permission denied: {_WRITABLE}",
    errno.EPERM: f"not permitted: {_WRITABLE}",
    errno.EROFS: f"the file system is read-only: {_WRITABLE}",
}


def describe_os_error(error: OSError) -> str:
    where = f"{error.filename}: " if error.filename else ""
    advice = _OS_ADVICE.get(error.errno, "check the path and try again")
    return f"{where}{error.strerror or type(error).__name__}; {advice}"


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"esapr: warning: {message}\n"


def _terminate(signum, frame) -> None:
    """The first SIGTERM ends the command as Ctrl-C does; later ones are ignored while it saves
    and says what was kept (SIGKILL still ends it at once)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt("terminated")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    warnings.formatwarning = _one_line_warning
    for stream in (sys.stdout, sys.stderr):     # a title the terminal cannot encode is escaped, not fatal
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    previous = signal.signal(signal.SIGTERM, _terminate)   # a kill ends like Ctrl-C: status "interrupted"
    signal.signal(signal.SIGINT, signal.default_int_handler)   # Ctrl-C interrupts even where a parent ignored it
    try:
        return _run(argv)
    except BrokenPipeError:     # the reader went away (``esapr results | head``) after the work was done
        return 0
    finally:
        _drop_closed_outputs()
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN:   # after a SIGTERM, later ones stay ignored
            signal.signal(signal.SIGTERM, previous)


def _run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"esapr: error: unknown command '{name}'; run 'esapr --help'", file=sys.stderr)
        return 2
    command = COMMANDS[name]
    if any(arg in ("-h", "--help") for arg in argv[1:]):
        print(command_help(command))
        return 0
    module, function = command.target.split(":")
    try:
        return getattr(importlib.import_module(module), function)(argv[1:])
    except UserError as error:
        _tell(f"esapr: error: {error}")
        return 2
    except OSError as error:     # the environment: permissions, a full disk, a read-only folder, ...
        if isinstance(error, BrokenPipeError):
            raise
        _tell(f"esapr: error: {describe_os_error(error)}")
        return 1
    except (MemoryError, RuntimeError) as error:
        if not _out_of_memory(error):
            raise
        first = first_line(error)
        _tell(f"esapr: error: out of memory ({first}); use smaller batches or a smaller model (the model's size "
              f"options: esapr train --help), fewer items (--min_sc), or a machine with more memory")
        return 1
    except KeyboardInterrupt as error:      # Ctrl-C, SIGTERM, or a run's output closed (``2>&1 | head``)
        _tell(f"esapr: {error if isinstance(error, Interrupted) else 'interrupted'}", progress_line=True)
        return 130


def _tell(message: str, progress_line: bool = False) -> None:
    """The one line that ends a command, on stderr; on a line of its own where a progress bar
    may hold the terminal's last one. Nothing where nobody reads stderr any more."""
    try:
        if progress_line and sys.stderr.isatty():
            print(file=sys.stderr)
        print(message, file=sys.stderr, flush=True)
    except BrokenPipeError:
        pass


def _drop_closed_outputs() -> None:
    """stdout and stderr whose reader went away are pointed at /dev/null: otherwise Python's
    flush at exit fails ("Exception ignored ... BrokenPipeError", exit status 120)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)
        except (AttributeError, ValueError, OSError):   # no stream, or one closed or without a descriptor
            pass


def _out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, MemoryError) or "out of memory" in text or "can't allocate memory" in text
