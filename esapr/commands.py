"""The command handlers: each ``cmd_<name>(argv)`` parses its options with the CLI's parser and
calls the package's API. Only this module and ``esapr.cli`` know about argv."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from esapr.cli import COMMANDS, SAVED_RUN_OPTIONS, parse_options
from esapr.config import build_config, build_data_options, describe_options, given_options
from esapr.errors import Interrupted, UserError
from esapr.progress import seconds


def format_metrics(metrics: dict, title: str) -> str:
    """A compact table: one row per metric of the table, one column per k; sampled, then full."""
    from esapr.metrics import FULL, METRICS
    lines = [title]
    for prefix, label in (("", "sampled"), (FULL, "full ranking")):
        keys = [k for k in metrics if k.startswith(prefix) and (prefix or not k.startswith(FULL))]
        if not keys:
            continue
        lines.append(f"  {label}:")
        for name in METRICS:
            cells = [f"{k[len(prefix):]}={metrics[k]:.4f}" for k in keys if k[len(prefix):].split("@")[0] == name]
            if cells:
                lines.append("    " + "  ".join(cells))
    return "\n".join(lines)


def config_and_given(argv: list[str], extra: tuple[str, ...] = ()):
    """The Config of a command line, its own flags, and the names of the options it sets."""
    overrides, flags = parse_options(argv, extra)
    templates = overrides.pop("templates", [])
    if isinstance(templates, str):
        templates = [templates]
    config = build_config(templates, overrides)
    return config, flags, given_options(templates, overrides)


def cmd_data(argv: list[str]) -> int:
    """Statistics of a dataset, or its caches made ahead of time (with a template or a model, its
    training negatives too)."""
    if not argv or argv[0] not in ("stats", "prepare"):
        raise UserError("usage: esapr data stats|prepare --dataset_code CODE | --data_file PATH [--option value ...]")
    overrides, flags = parse_options(argv[1:], extra=("json",))
    from esapr.data.prepare import load_sequences, prepare_data  # after the options: a typo fails fast
    if argv[0] == "prepare" and ("templates" in overrides or "model_code" in overrides):
        templates = overrides.pop("templates", [])
        config = build_config([templates] if isinstance(templates, str) else templates, overrides)
        data = prepare_data(config)
        print(json.dumps({"cache": str(data.cache_dir), **data.sequences.stats(), **data.timings}))
        return 0
    options = build_data_options(overrides)
    sequences, folder, _ = load_sequences(options)
    stats = sequences.stats()
    if argv[0] == "prepare":
        from esapr.data.prepare import test_negatives
        test_negatives(options, sequences, folder)
        print(json.dumps({"cache": str(folder), **stats}))
    elif flags.get("json"):
        print(json.dumps(stats))
    else:
        print(f"dataset           {options.data_file or options.dataset_code}  (cache {folder})")
        for key, value in stats.items():
            if isinstance(value, dict):
                value = "  ".join(f"{name} {number:,.0f}" for name, number in value.items())
            elif isinstance(value, float):
                value = f"{value:.4g}"
            else:
                value = f"{value:,}"
            print(f"{key:<17} {value}")
    return 0


def cmd_options(argv: list[str]) -> int:
    overrides, flags = parse_options(argv, extra=("templates",), allowed=())
    templates = flags.get("templates")
    templates = [templates] if isinstance(templates, str) else templates
    print(describe_options(build_config(templates) if templates else None))
    return 0


def cmd_train(argv: list[str]) -> int:
    config, flags, given = config_and_given(argv, extra=("quiet",))
    from esapr.training.trainer import train  # after the options: a bad one fails without loading torch
    results = train(config, progress="quiet" if flags.get("quiet") else "auto", given=given)
    print(format_metrics(results["test"], f"test metrics of {results['experiment']} "
                                          f"(best epoch {results['best_epoch']} of {results['epochs']}, "
                                          f"{seconds(results['train_seconds'])})"))
    return 0


def cmd_evaluate(argv: list[str]) -> int:
    """Re-evaluate the saved best model; reads the folder, writes nothing."""
    overrides, flags = parse_options(argv, extra=("experiment", "split", "json"),
                                     allowed=COMMANDS["evaluate"].options)
    if "experiment" not in flags:
        raise UserError(f"usage: {COMMANDS['evaluate'].usage}")
    split = flags.get("split", "test")
    if split not in ("val", "test"):
        raise UserError(f"--split must be val or test, got '{split}'")
    from esapr.data.prepare import prepare_data
    from esapr.experiment import Experiment
    from esapr.training.evaluator import load_run
    path = Path(flags["experiment"])
    experiment = Experiment(path)
    config = experiment.run_config(**overrides)
    metrics = load_run(experiment, config, prepare_data(config)).evaluate(split).metrics
    print(json.dumps(metrics) if flags.get("json") else format_metrics(metrics, f"{split} metrics of {path}"))
    return 0


def cmd_results(argv: list[str]) -> int:
    """esapr results [--root ROOT ...] [--png FILE] [--split test|val] [--curves DIR] [--metrics M ...]"""
    from esapr.figures import figure_format
    from esapr.results import format_table, plot_curves, plot_results_table, results_table

    overrides, flags = parse_options(argv, extra=("root", "png", "split", "curves", "metrics", "digits"), allowed=())
    root = flags.get("root", "experiments")
    roots = root if isinstance(root, list) else [root]
    metrics = flags.get("metrics")
    if isinstance(metrics, str):
        metrics = metrics.replace(",", " ").split()
    try:
        digits = int(flags.get("digits", 4))
    except (TypeError, ValueError):
        raise UserError(f"--digits expects a whole number, got '{flags['digits']}'") from None
    if not 0 <= digits <= 12:
        raise UserError(f"--digits is {digits}; give 0 to 12 decimals")
    if flags.get("png"):
        figure_format(flags["png"])
    if "root" not in flags and not Path(root).is_dir():
        raise UserError("no ./experiments folder here (esapr results reads it by default); pass --root FOLDER")
    frame = results_table(roots, metrics=metrics, split=flags.get("split", "test"))
    print(format_table(frame, digits))
    for problem in frame.attrs["unreadable"]:
        print(f"left out, unreadable: {problem}")
    if flags.get("png"):
        plot_results_table(frame, flags["png"], digits=digits)
        print(f"table figure: {flags['png']}")
    if flags.get("curves"):
        folder = Path(flags["curves"])
        for (dataset, model), path in zip(frame.index, frame.attrs["paths"]):
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{dataset}_{model}")
            plot_curves(path, folder / f"curves_{name}.png")
        print(f"learning curves: {folder}/curves_*.png")
    return 0


def cmd_recommend(argv: list[str]) -> int:
    """esapr recommend --experiment PATH (--user ID | --items ID ...) [-k 10] [--data_file F | --local_data_folder D]"""
    from esapr.recommend import format_recommendations, load_experiment
    overrides, flags = parse_options(argv, extra=("experiment", "user", "items", "k", "json"),
                                     allowed=SAVED_RUN_OPTIONS)
    if "experiment" not in flags or ("user" in flags) == ("items" in flags):
        raise UserError(f"usage: {COMMANDS['recommend'].usage}")
    try:
        k = int(flags.get("k", 10))
    except ValueError:
        raise UserError(f"-k expects a whole number, got '{flags['k']}'") from None
    experiment = load_experiment(flags["experiment"], **{"device": "cpu", **overrides})
    if "user" in flags:
        frame = experiment.recommend(user=flags["user"], k=k)
    else:
        items = flags["items"] if isinstance(flags["items"], list) else str(flags["items"]).replace(",", " ").split()
        frame = experiment.recommend(history=items, k=k)
    print(frame.to_json(orient="records") if flags.get("json") else format_recommendations(frame))
    return 0


def cmd_compare(argv: list[str]) -> int:
    """esapr compare --templates T ... [--seeds 0 1 2 3 4] [--jobs N] [--dry_run | --aggregate_only] ..."""
    from esapr.comparison import CLI, DEFAULT_SEEDS, run_compare
    overrides, flags = parse_options(argv, extra=("seeds", "jobs", "dry_run", "aggregate_only", "output", "metrics",
                                                  "quiet", "tuned", "pareto"))
    templates = overrides.pop("templates", None)
    if not templates:
        raise UserError("compare needs templates; usage: esapr compare --templates train_vae train_sas[:N] ... "
                        "[--seeds 0 1 2 3 4] [--jobs N] [--dry_run | --aggregate_only] [--option value ...]")
    seeds = flags.get("seeds", list(DEFAULT_SEEDS))
    seeds = seeds.replace(",", " ").split() if isinstance(seeds, str) else seeds
    metrics = flags.get("metrics")
    metrics = " ".join(metrics) if isinstance(metrics, list) else metrics
    metrics = metrics.replace(",", " ").split() if isinstance(metrics, str) else metrics
    for name in ("dry_run", "aggregate_only", "quiet", "tuned", "pareto"):
        if flags.get(name) not in (None, True):
            raise UserError(f"--{name} is a flag; write it without a value")
    quiet, dry_run = bool(flags.get("quiet")), bool(flags.get("dry_run"))
    result = run_compare(CLI, templates, seeds, jobs=flags.get("jobs", 1), dry_run=dry_run,
                         aggregate_only=bool(flags.get("aggregate_only")), output=flags.get("output"),
                         metrics=metrics, progress="quiet" if quiet else "auto",
                         say=(lambda *a: None) if quiet and not dry_run else _say, tuned=bool(flags.get("tuned")),
                         **overrides)
    if isinstance(result, list):     # a dry run's commands, printed: what it was asked for, quiet or not
        return 0
    print(result.format(metrics))
    if flags.get("pareto"):
        from esapr.comparison.pareto import write_pareto
        pareto = write_pareto(result, result.files["csv"].with_suffix(""), metrics[0] if metrics else None)
        result.files.update({f"pareto {kind}": path for kind, path in pareto.items()})
    print("\n" + "  ".join(f"{kind}: {path}" for kind, path in result.files.items()))
    problems = [o for o in result.runs if o.problem]
    if problems:
        print(f"esapr: warning: {len(problems)} of {len(result.runs)} runs failed or are damaged; they are left out "
              f"of the table", file=sys.stderr)
        return 1
    return 0


def _say(*words) -> None:
    """compare's progress lines; a closed output (``esapr compare ... | head``) stops it as Ctrl-C
    does (its runs resumable, exit 130), not as if it had finished."""
    try:
        print(*words, flush=True)
    except BrokenPipeError:
        raise Interrupted("its output was closed; compare stopped: run the same command again to go on") from None


def cmd_tune(argv: list[str]) -> int:
    """esapr tune --templates T ... --trials N and/or --hours H [--jobs N] [--storage URL] [--space FILE] ..."""
    overrides, flags = parse_options(argv, extra=("trials", "hours", "jobs", "storage", "space", "sampler", "seed",
                                                  "quiet"))
    templates = overrides.pop("templates", None)
    if not templates:
        raise UserError(f"tune needs templates; usage: {COMMANDS['tune'].usage}")
    if flags.get("quiet") not in (None, True):
        raise UserError("--quiet is a flag; write it without a value")
    from esapr.comparison import CLI
    from esapr.tuning import run_tune
    quiet = bool(flags.get("quiet"))
    run_tune(CLI, [templates] if isinstance(templates, str) else templates, flags.get("trials"), flags.get("hours"),
             flags.get("jobs", 1), flags.get("storage"), flags.get("space"), flags.get("sampler", "tpe"),
             flags.get("seed", 0), progress="quiet" if quiet else "auto", **overrides)
    return 0
