"""Top-k recommendations from a trained experiment, for any model family.

``load_experiment(path)`` reads the folder's config and best weights. ``recommend(user=ID)``
scores a known user's full history; ``recommend(history=[item ids])`` scores any new history.
Both use only the model's public pieces: its batch builder's ``eval_batch`` and ``scores``.

How a batch is built from a history: evaluation batches ask for the history ``items[start:end]``
with ``end`` the index of the *answer*. So the history is written into a copy of the CSR
sequences (into the user's own row for a known user, as one extra row for a new history),
followed by a dummy answer item, and ``eval_batch`` is called with ``ends`` pointing at that
dummy. Each builder leaves the answer out of the model's input (VAE: the bag covers slots
0..N-2; BERT/MEANTIME: the answer slot becomes the mask token; SAS family: the input ends before
it), so the dummy never influences the scores. The dummy repeats the last item and its timestamp.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from esapr.errors import UserError


class LoadedExperiment:
    """A trained experiment ready to recommend: ``.config``, ``.results``, ``.path``."""

    def __init__(self, path, device: str = "cpu", data_folder: str | None = None):
        from esapr.commands import load_experiment_config
        from esapr.experiment import Experiment

        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise UserError(f"{self.path}: no config.json; is this an experiment folder?")
        self.experiment = Experiment(self.path)
        overrides = {"device": device}
        if data_folder is not None:
            overrides["local_data_folder"] = str(data_folder)
        self.saved_config = self.experiment.read_config()
        self.config = load_experiment_config(self.path, **overrides)
        self.results = self.experiment.read_results() or {}
        if not self.experiment.best_model.is_file():
            raise UserError(f"{self.path}: no models/best_model.pth yet; train the experiment first")
        self._data = None
        self._model = None
        self._titles = None

    # --- lazily loaded parts ------------------------------------------------------------------
    @property
    def data(self):
        if self._data is None:
            from esapr.data.prepare import prepare_data
            data = prepare_data(self.config)
            saved = (self.saved_config.get("n_users"), self.saved_config.get("n_items"))
            have = (data.sequences.n_users, data.sequences.n_items)
            if None not in saved and tuple(saved) != have:
                raise UserError(f"{self.path}: the dataset now has {have[0]} users and {have[1]} items, "
                                f"the model was trained on {saved[0]} and {saved[1]}; the data changed")
            self._data = data
        return self._data

    @property
    def model(self):
        if self._model is None:
            from esapr.models import build_model
            from esapr.training.trainer import data_info, resolve_device
            self.device = resolve_device(self.config.device)
            model = build_model(self.config, data_info(self.data)).to(self.device)
            state = self.experiment.load(self.experiment.best_model, self.device)
            model.load_state_dict(state["model"])
            model.eval()
            self._model = model
        return self._model

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
    def _extended_data(self, row: int, items: np.ndarray, timestamps: np.ndarray):
        """A copy of the prepared data whose ``row`` holds ``items`` + a dummy answer."""
        from esapr.data.sequences import Sequences

        data = self.data
        seqs = data.sequences
        n_users = seqs.n_users
        new_items = np.append(items, items[-1]).astype(seqs.items.dtype)
        new_times = np.append(timestamps, timestamps[-1]).astype(seqs.timestamps.dtype)
        lo, hi = (seqs.offsets[row], seqs.offsets[row + 1]) if row < n_users else (seqs.offsets[-1],) * 2
        lengths = seqs.lengths.copy()
        user_ids = seqs.user_ids
        extra = {}
        if row < n_users:
            lengths[row] = len(new_items)
        else:
            lengths = np.append(lengths, len(new_items))
            user_ids = np.append(user_ids, user_ids[:1])
            for name in ("test_negatives", "train_negatives"):
                array = getattr(data, name)
                if array is not None:
                    extra[name] = np.concatenate([array, array[:1]], axis=0)
        offsets = np.zeros(len(lengths) + 1, dtype=seqs.offsets.dtype)
        np.cumsum(lengths, out=offsets[1:])
        sequences = Sequences(offsets=offsets,
                              items=np.concatenate([seqs.items[:lo], new_items, seqs.items[hi:]]),
                              timestamps=np.concatenate([seqs.timestamps[:lo], new_times, seqs.timestamps[hi:]]),
                              user_ids=user_ids, item_ids=seqs.item_ids)
        return dataclasses.replace(data, sequences=sequences, **extra), int(offsets[row + 1] - 1)

    @torch.no_grad()
    def scores(self, row: int, items: np.ndarray, timestamps: np.ndarray) -> torch.Tensor:
        """Scores [n_items + 1] of every item after the history ``items`` (dense ids) of ``row``."""
        model = self.model
        data, answer_at = self._extended_data(row, items, timestamps)
        builder = model.batch_builder(data, self.config, self.device)
        users = torch.tensor([row], device=self.device)
        ends = torch.tensor([answer_at], device=self.device)
        batch = builder.eval_batch(users, ends)
        answers = builder.items[ends]
        extras = dict(users=users, ends=ends, answers=answers,
                      candidates=torch.cat([answers.unsqueeze(1), builder.negatives[users]], dim=1))
        for key, value in extras.items():  # keys the builder set itself (MARank's 1-based users) win
            batch.setdefault(key, value)
        try:
            scores = model.scores(batch)
        except IndexError as error:
            raise UserError(f"model '{self.config.model_code}' cannot score this history "
                            f"({error}); it may need a known user: pass user=ID") from None
        return scores[0, : data.sequences.n_items + 1].float().cpu()

    def recommend(self, user=None, history=None, k: int = 10, exclude_seen: bool = True) -> pd.DataFrame:
        """Top-``k`` items after a known ``user``'s full history or after a new ``history`` of
        original item ids (oldest first). Seen items and padding are never recommended.
        Returns rank, item (original id), title (where the dataset has titles) and score."""
        if (user is None) == (history is None):
            raise UserError("recommend needs exactly one of user=ID or history=[item ids]")
        if int(k) < 1:
            raise UserError(f"k must be at least 1, got {k}")
        seqs = self.data.sequences
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
            row = seqs.n_users
            times = np.full(len(items), seqs.timestamps.max() if seqs.n_interactions else 0, dtype=np.int64)
        scores = self.scores(row, items, times)
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


def load_experiment(path, device: str = "cpu", data_folder: str | None = None) -> LoadedExperiment:
    """Open a trained experiment folder. ``data_folder`` replaces the saved local_data_folder
    (when the data lives elsewhere now); the data is loaded on first use."""
    return LoadedExperiment(path, device=device, data_folder=data_folder)


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
        import json

        import ipywidgets as w

        from esapr.results import find_experiments, model_label

        sources = [experiments] if isinstance(experiments, (str, Path)) else list(experiments)
        if selected is not None:
            sources = [selected, *sources]
        paths = [p for p in find_experiments(sources) if (p / "models" / "best_model.pth").is_file()]
        if not paths:
            raise UserError(f"no trained experiments (with models/best_model.pth) in {experiments}")
        options = []
        for path in paths:
            config = json.loads((path / "config.json").read_text())
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
            self._loaded[path] = load_experiment(path, device=self.device, data_folder=self.data_folder)
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


# --- CLI -----------------------------------------------------------------------------------------
def cmd_recommend(argv: list[str]) -> int:
    """esapr recommend --experiment PATH (--user ID | --items ID ...) [-k 10] [--data_folder DIR]"""
    from esapr.cli import parse_options

    overrides, flags = parse_options(argv, extra=("experiment", "user", "items", "k", "data_folder", "json"))
    device = overrides.pop("device", "cpu")
    folder = overrides.pop("local_data_folder", flags.get("data_folder"))
    if overrides or "experiment" not in flags or ("user" in flags) == ("items" in flags):
        raise UserError("usage: esapr recommend --experiment PATH (--user ID | --items ID ...) [-k 10] "
                        "[--data_folder DIR] [--json]")
    try:
        k = int(flags.get("k", 10))
    except ValueError:
        raise UserError(f"-k expects a whole number, got '{flags['k']}'") from None
    experiment = load_experiment(flags["experiment"], device=device, data_folder=folder)
    if "user" in flags:
        frame = experiment.recommend(user=flags["user"], k=k)
    else:
        items = flags["items"] if isinstance(flags["items"], list) else str(flags["items"]).replace(",", " ").split()
        frame = experiment.recommend(history=items, k=k)
    print(frame.to_json(orient="records") if flags.get("json") else format_recommendations(frame))
    return 0
