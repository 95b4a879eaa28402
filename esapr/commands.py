"""`esapr train` and `esapr evaluate`."""
from __future__ import annotations

import json
from pathlib import Path

from esapr.cli import _config_and_given
from esapr.config import Config, build_config
from esapr.errors import UserError


def format_metrics(metrics: dict, title: str) -> str:
    """A compact table: one row per metric family, one column per k."""
    lines = [title]
    for prefix, label in (("", "sampled"), ("full_", "full ranking")):
        keys = [k for k in metrics if k.startswith(prefix) and (prefix or not k.startswith("full_"))]
        if not keys:
            continue
        lines.append(f"  {label}:")
        for family in ("NDCG", "Recall", "MRR"):
            cells = [f"{k[len(prefix):]}={metrics[k]:.4f}" for k in keys if k[len(prefix):].startswith(family)]
            if cells:
                lines.append("    " + "  ".join(cells))
    return "\n".join(lines)


def cmd_train(argv: list[str]) -> int:
    config, flags, given = _config_and_given(argv, extra=("quiet",))
    from esapr.training.trainer import train  # after the options: a bad one fails without loading torch
    results = train(config, progress="quiet" if flags.get("quiet") else "auto", given=given)
    print(format_metrics(results["test"], f"test metrics of {results['experiment']} "
                                          f"(best epoch {results['best_epoch']} of {results['epochs']}, "
                                          f"{results['train_seconds']:.0f} s)"))
    return 0


def load_experiment_config(path: Path, **overrides) -> Config:
    from esapr.experiment import Experiment
    saved = Experiment(path).read_config()
    options = {k: v for k, v in saved.items() if k in Config.__dataclass_fields__}
    options.update(overrides)
    try:
        return build_config(overrides=options, apply_templates=False)
    except UserError as error:
        raise UserError(f"{Experiment(path).config_file}: {error}") from None


def cmd_evaluate(argv: list[str]) -> int:
    """Re-evaluate the saved best model; reads the folder, writes nothing."""
    from esapr.cli import parse_options
    from esapr.data.prepare import prepare_data
    from esapr.experiment import Experiment
    from esapr.training.trainer import Trainer
    overrides, flags = parse_options(argv, extra=("experiment", "split", "json"))
    if "experiment" not in flags:
        raise UserError("usage: esapr evaluate --experiment PATH [--split val|test] [--json]")
    split = flags.get("split", "test")
    if split not in ("val", "test"):
        raise UserError(f"--split must be val or test, got '{split}'")
    path = Path(flags["experiment"])
    config = load_experiment_config(path, **overrides)
    data = prepare_data(config)
    Experiment(path).check_data(data.fingerprint)
    trainer = Trainer(config, data, progress=False)
    trainer.load_best(Experiment(path))
    metrics = trainer.evaluate(split).metrics
    print(json.dumps(metrics) if flags.get("json") else format_metrics(metrics, f"{split} metrics of {path}"))
    return 0
