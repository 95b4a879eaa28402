"""esapr: sequential recommendation with ESAPR (a recency-weighted VAE) and its baselines.

The public API is small and imported lazily (torch and matplotlib load on first use):

    train(templates=["train_vae"], dataset_code="ml-100k")   -> results dict
    load_experiment(path).recommend(user=1, k=10)            -> top-k DataFrame
    results_table(root)                                      -> DataFrame (experiments x metrics)
    plot_results_table(table, "table.png"), plot_curves(experiment_path, "curves.png")
    compare(["train_vae", "train_sas"], seeds=[0, 1, 2], dataset_code="ml-100k")  -> Comparison
    tune(["train_ease", "train_vae"], trials=20, dataset_code="ml-100k")  -> {template: StudyReport}
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["train", "compare", "tune", "load_experiment", "results_table", "plot_results_table", "plot_curves",
           "build_config", "UserError"]

from esapr.errors import UserError

_LAZY = {
    "load_experiment": "esapr.recommend",
    "results_table": "esapr.results",
    "plot_results_table": "esapr.results",
    "plot_curves": "esapr.results",
    "build_config": "esapr.config",
    "compare": "esapr.comparison",      # the package is named apart, so no import shadows the function
    "tune": "esapr.tuning",             # likewise
}


def train(config=None, templates=None, progress: bool = True, **overrides) -> dict:
    """Train one experiment and test its best model; returns the results (also in results.json).

    Pass a ready ``Config``, or ``templates`` and options: ``train(templates=["train_vae"],
    dataset_code="ml-100k", num_epochs=5)``."""
    from esapr.config import Config, build_config, python_words
    from esapr.training.trainer import train as _train

    try:
        if isinstance(config, Config):
            if templates or overrides:
                raise UserError("pass either a Config or templates/options, not both")
        else:
            if isinstance(config, (str, list)) and templates is None:
                templates = config
            templates = [templates] if isinstance(templates, str) else list(templates or [])
            config = build_config(templates, overrides)
        return _train(config, progress=progress)
    except UserError as error:      # advice in this call's words: overwrite=True, not --overwrite
        raise UserError(python_words(str(error))) from None


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'esapr' has no attribute '{name}'")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
