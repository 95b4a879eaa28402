"""Model-specific schedules the trainer calls without knowing the model.

The default does nothing and stops at the first plateau. ESAPR's schedule (KL annealing and
the recover_len halving of transfer training) lives beside its model in ``models/vae.py``.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Transfer:
    """What a schedule asks for at a plateau instead of stopping."""
    reload_best: bool
    message: str


class Schedule:
    def before_step(self, model) -> None:
        """Called before each optimizer step (e.g. to set the KL weight)."""

    def patience(self, default: int) -> int:
        """Epochs without improvement that make a plateau in the current stage (``default``: the
        run's saturation_wait_epochs)."""
        return default

    def on_plateau(self, model, improved: bool) -> Transfer | None:
        """Validation stopped improving (``improved``: whether the stage that ends raised the best
        metric): start a new stage (a Transfer) or stop (None)."""
        return None

    def log_values(self) -> dict:
        """Extra columns for the training log."""
        return {}

    def progress_values(self) -> dict:
        """What the progress display shows besides the metric (e.g. the current stage)."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict, model) -> None:
        """Restore the schedule's state and apply it to the model."""
