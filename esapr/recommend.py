"""Top-k recommendations from a trained experiment, for any model family.

``load_experiment(path)`` reads the folder's config and best weights. ``recommend(user=ID)``
scores a known user's full history; ``recommend(history=[item ids])`` scores any new history.
Both use only the model's public pieces: its batch builder's ``history_batch`` and ``scores``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from esapr.errors import UserError


class LoadedExperiment:
    """A trained experiment ready to recommend: ``.config``, ``.results``, ``.path``. The data is
    found where the run recorded it (``data_file``/``local_data_folder`` say where it is now)."""

    def __init__(self, path, device: str = "cpu", data_file: str | None = None,
                 local_data_folder: str | None = None):
        from esapr.experiment import Experiment

        self.path = Path(path)
        self.experiment = Experiment(self.path)
        places = {"data_file": data_file, "local_data_folder": local_data_folder}
        self.config = self.experiment.run_config(device=device, **{k: v for k, v in places.items() if v is not None})
        self.results = self.experiment.read_results() or {}
        if not self.experiment.has_weights():
            raise UserError(f"{self.path}: no trained model yet (models/ is empty); train the experiment first")
        self._run = None
        self._titles = None

    # --- lazily loaded parts ------------------------------------------------------------------
    @property
    def run(self):
        """The model with its best weights, its data and batch builder (``training.evaluator``)."""
        if self._run is None:
            from esapr.data.prepare import prepare_data
            from esapr.training.evaluator import load_run
            self._run = load_run(self.experiment, self.config, prepare_data(self.config))
            self._run.model.eval()
        return self._run

    @property
    def data(self):
        return self.run.data

    @property
    def model(self):
        return self.run.model

    @property
    def device(self):
        return self.run.device

    @property
    def builder(self):
        return self.run.batches

    def titles(self) -> dict:
        if self._titles is None:
            self._titles = self.data.titles()
        return self._titles

    # --- ids -----------------------------------------------------------------------------------
    @staticmethod
    def _as_id(value, ids: np.ndarray):
        if ids.dtype.kind in "iu":
            try:
                number = float(value)
            except (TypeError, ValueError):
                return None
            return int(number) if number.is_integer() else None
        return str(value)

    def user_row(self, user) -> int:
        seqs = self.data.sequences
        key = self._as_id(user, seqs.user_ids)
        index = seqs.user_index()
        if key not in index:
            sample = ", ".join(map(str, seqs.user_ids[:3].tolist()))
            raise UserError(f"unknown user id {user!r}: not among the {seqs.n_users} users of "
                            f"{self.path.name} (ids like {sample}; users with too few interactions are "
                            f"filtered out)")
        return index[key]

    def dense_items(self, items) -> np.ndarray:
        seqs = self.data.sequences
        index = seqs.item_index()
        keys = [self._as_id(i, seqs.item_ids) for i in items]
        unknown = [str(i) for i, k in zip(items, keys) if k not in index]
        if unknown:
            raise UserError(f"unknown item id(s) {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}: "
                            f"not in the model's {seqs.n_items} items (unknown, or filtered out as too rare)")
        return np.array([index[k] for k in keys], dtype=np.int64)

    def history(self, user) -> pd.DataFrame:
        """A known user's items in time order, with original ids, timestamps and titles."""
        seqs = self.data.sequences
        row = self.user_row(user)
        span = slice(seqs.offsets[row], seqs.offsets[row + 1])
        frame = pd.DataFrame({"item": seqs.item_ids[seqs.items[span] - 1], "timestamp": seqs.timestamps[span]})
        return self._with_titles(frame)

    def _with_titles(self, frame: pd.DataFrame) -> pd.DataFrame:
        titles = self.titles()
        if titles:
            frame.insert(frame.columns.get_loc("item") + 1, "title", [titles.get(i, "") for i in frame["item"].tolist()])
        return frame

    # --- scoring --------------------------------------------------------------------------------
    @torch.no_grad()
    def scores(self, items: np.ndarray, timestamps: np.ndarray, row: int | None = None) -> torch.Tensor:
        """Scores [n_items + 1] of every item after the history ``items`` (dense ids) of the
        user in ``row`` (None: a history not in the data)."""
        batch = self.builder.history_batch(items, timestamps, row)
        return self.model.scores(batch)[0, : self.data.sequences.n_items + 1].float().cpu()

    def recommend(self, user=None, history=None, k: int = 10, exclude_seen: bool = True) -> pd.DataFrame:
        """Top-``k`` items after a known ``user``'s full history or after a new ``history`` of
        original item ids (oldest first). Seen items and padding are never recommended.
        Returns rank, item (original id), title (where the dataset has titles) and score."""
        if (user is None) == (history is None):
            raise UserError("recommend needs exactly one of user=ID or history=[item ids]")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise UserError(f"k must be a whole number of at least 1, got {k!r}")
        seqs = self.data.sequences
        row = None
        if user is not None:
            row = self.user_row(user)
            span = slice(seqs.offsets[row], seqs.offsets[row + 1])
            items = seqs.items[span].astype(np.int64)
            times = seqs.timestamps[span]
        else:
            history = [history] if isinstance(history, (str, int, np.integer)) else list(history)
            if not history:
                raise UserError("history is empty; give at least one item id")
            items = self.dense_items(history)
            times = np.full(len(items), seqs.timestamps.max() if seqs.n_interactions else 0, dtype=np.int64)
        scores = self.scores(items, times, row)
        scores[0] = -torch.inf
        if exclude_seen:
            scores[torch.as_tensor(items)] = -torch.inf
        allowed = int(torch.isfinite(scores).sum())
        if allowed == 0:
            raise UserError("every item is already in the history; nothing left to recommend")
        top = torch.topk(scores, min(int(k), allowed))
        dense = top.indices.numpy()
        frame = pd.DataFrame({"rank": np.arange(1, len(dense) + 1), "item": seqs.item_ids[dense - 1],
                              "score": top.values.numpy().astype(float)})
        return self._with_titles(frame)


def load_experiment(path, device: str = "cpu", data_file: str | None = None,
                    local_data_folder: str | None = None) -> LoadedExperiment:
    """Open a trained experiment folder; its data is found where the run recorded it, or where
    ``data_file`` / ``local_data_folder`` say it is now, and loaded on first use."""
    return LoadedExperiment(path, device=device, data_file=data_file, local_data_folder=local_data_folder)


def format_recommendations(frame: pd.DataFrame) -> str:
    """rank, item id, title, score: one line each."""
    has_titles = "title" in frame.columns
    item_w = max(4, *(len(str(i)) for i in frame["item"]))
    title_w = max([5] + [len(t) for t in frame["title"]]) if has_titles else 0
    lines = [f"{'rank':>4}  {'item':>{item_w}}  " + (f"{'title':<{title_w}}  " if has_titles else "") + "score"]
    for row in frame.itertuples(index=False):
        title = f"{row.title:<{title_w}}  " if has_titles else ""
        lines.append(f"{row.rank:>4}  {str(row.item):>{item_w}}  {title}{row.score:.4f}")
    return "\n".join(lines)


# --- an interactive panel (ipywidgets 7 and 8) -----------------------------------------------------
class RecommendationPanel:
    """Choose an experiment, type a user id or a few item ids, see the top-k with titles.

    Uses only Dropdown, Text, Button, Output, HBox and VBox with ``observe`` / ``on_click``,
    which behave the same in ipywidgets 7 (Colab) and 8. ``.widget`` is the box to display;
    ``.result`` holds the last table (or None after an error, whose message is in ``.message``).
    """

    def __init__(self, experiments, k: int = 10, data_folder: str | None = None, device: str = "cpu",
                 selected=None):
        import ipywidgets as w

        from esapr.results import find_experiments, model_label

        sources = [experiments] if isinstance(experiments, (str, Path)) else list(experiments)
        if selected is not None:
            sources = [selected, *sources]
        from esapr.experiment import Experiment

        paths = [p for p in find_experiments(sources) if Experiment(p).has_weights()]
        if not paths:
            raise UserError(f"no trained experiments (with a model in models/) in {experiments}")
        options = []
        for path in paths:
            config = Experiment(path).read_config()
            options.append((f"{model_label(config)} · {path.parent.name}/{path.name}", str(path)))
        self.k = k
        self.data_folder = data_folder
        self.device = device
        self._loaded: dict[str, LoadedExperiment] = {}
        self.result = None
        self.message = ""
        self.experiment = w.Dropdown(options=options, value=options[0][1], description="experiment")
        self.user = w.Text(value="", placeholder="e.g. 1", description="user id")
        self.items = w.Text(value="", placeholder="e.g. 1, 50, 181 (oldest first)", description="or items")
        self.button = w.Button(description="Recommend")
        self.output = w.Output()
        self.button.on_click(self._on_click)
        self.experiment.observe(self._on_change, names="value")
        self.widget = w.VBox([self.experiment, w.HBox([self.user, self.items, self.button]), self.output])

    def _get(self, path: str) -> LoadedExperiment:
        if path not in self._loaded:
            self._loaded[path] = load_experiment(path, device=self.device, local_data_folder=self.data_folder)
        return self._loaded[path]

    def _on_change(self, change) -> None:
        self.output.clear_output()
        self.result = None

    def run(self) -> pd.DataFrame | None:
        """Recommend for the current inputs (what the button does)."""
        from IPython.display import display

        self.output.clear_output()
        self.result, self.message = None, ""
        try:
            experiment = self._get(self.experiment.value)
            user, items = self.user.value.strip(), self.items.value.replace(",", " ").split()
            if user and items:
                raise UserError("type either a user id or item ids, not both")
            if not user and not items:
                raise UserError("type a user id or a few item ids")
            self.result = (experiment.recommend(user=user, k=self.k) if user
                           else experiment.recommend(history=items, k=self.k))
        except UserError as error:
            self.message = str(error)
        with self.output:
            if self.result is not None:
                display(self.result)
            else:
                print(f"esapr: {self.message}")
        return self.result

    def _on_click(self, button) -> None:
        self.run()

    def _ipython_display_(self):
        from IPython.display import display
        display(self.widget)


def recommendation_panel(experiments, k: int = 10, data_folder: str | None = None, device: str = "cpu",
                         selected=None) -> RecommendationPanel:
    """The interactive panel over an experiment folder, a root of experiments, or a list;
    ``selected`` (an experiment folder) comes first and is chosen."""
    return RecommendationPanel(experiments, k=k, data_folder=data_folder, device=device, selected=selected)
