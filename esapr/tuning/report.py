"""What a study leaves beside its trials, in ``tune/<template>/``: ``best.yaml`` (the best trial's
options as a template that ``esapr train`` and ``esapr compare`` take), ``trials.csv``,
``history.png`` (each trial's validation value and each epoch's, pruned trials marked),
``importances.png`` (Optuna's parameter importances) and ``summary.json`` (counts, time, best)."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PurePath
from typing import Any

import optuna
import pandas as pd
import yaml
from optuna.trial import FrozenTrial, TrialState

from esapr.figures import save_figure
from esapr.families import family
from esapr.files import atomic_write_text
from esapr.options.groups import RunOptions
from esapr.progress import seconds
from esapr.families.base import Choice, Space
from esapr.tuning.space import as_options, from_json
from esapr.tuning.study import Search, folder_of, safe_url
from esapr.tuning.worker import trial_config

# options given to a search that say where runs live and what they run on, not what they compute: not in best.yaml
MACHINE = frozenset({f.name for f in fields(RunOptions) if not f.metadata["identity"]} |
                    {"local_data_folder", "data_url"})
MIN_FOR_IMPORTANCES = 4         # complete trials before importances say anything
STATES = ("complete", "pruned", "failed", "running", "waiting", "unused")
COLORS = {"complete": "tab:blue", "pruned": "0.6", "best": "tab:orange"}


@dataclass
class StudyReport:
    """One template's study after a call: counts by state, training seconds, the best trial."""
    template: str
    study: str
    folder: Path
    budget: str
    counts: dict[str, int]
    train_seconds: float
    best_trial: int | None = None
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        words = {"unused": "unused (asked once the budget was taken)"}
        counts = ", ".join(f"{n} {words.get(state, state)}" for state, n in self.counts.items() if n)
        best = (f"best: trial {self.best_trial}, {self.best_value:.4f}" if self.best_trial is not None else
                "no complete trial yet")
        return (f"{self.template}: {counts or 'no trials'} (budget {self.budget}); {seconds(self.train_seconds)} of "
                f"training; {best}")


def state_of(trial: FrozenTrial) -> str:
    if trial.user_attrs.get("unused"):
        return "unused"         # asked after other workers had taken the budget's last trials; never trained
    return {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
            TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}[trial.state]


def trials_frame(trials: list[FrozenTrial]) -> pd.DataFrame:
    """One row per trial: number, state, value, epochs, training seconds, folder, what it retries,
    why it failed, its worker, then the searched values."""
    retried = {t.user_attrs["retry_of"]: t.number for t in trials if "retry_of" in t.user_attrs}
    rows = []
    for t in trials:
        state = state_of(t)
        note = t.user_attrs.get("error", "")
        if t.number in retried:
            note = f"its worker died; retried as trial {retried[t.number]}"
        if state == "unused":
            note = "asked after other workers had taken the budget's last trials; not trained"
        rows.append({"trial": t.number, "state": state, "value": t.value, "epochs": t.user_attrs.get("epochs"),
                     "train_seconds": t.user_attrs.get("train_seconds"),
                     "folder": "" if state == "unused" else folder_of(t), "retry_of": t.user_attrs.get("retry_of"),
                     "note": note, "worker": t.user_attrs.get("worker"), **t.params})
    frame = pd.DataFrame(rows)
    for column in ("epochs", "retry_of"):
        if column in frame:
            frame[column] = frame[column].astype("Int64")
    return frame


def best_template(search: Search, trial: FrozenTrial) -> dict[str, Any]:
    """The best trial as a template: the template it tuned, the options given (the data, a fixed
    num_epochs, batch sizes, ...; a data file by its absolute path) except where runs live and what
    they run on, the drawn values, a label and folder name of its own."""
    config = trial_config(search, trial.params, folder_of(trial))
    values = config.values()
    template = str(Path(search.template).resolve()) if search.template.endswith((".yaml", ".yml")) else search.template
    given = {name: values[name] for name in search.options if name in values and name not in MACHINE}
    if given.get("data_file"):
        given["data_file"] = str(Path(given["data_file"]).resolve())
    label = config.run.model_label or config.family.label
    return {"templates": [template], "model_label": f"{label} tuned",
            "experiment_name": PurePath(search.template).stem.removeprefix("train_") + "_tuned",
            **given, **as_options(search.code, trial.params)}


def write_best(search: Search, trial: FrozenTrial, path: Path, counted: str) -> None:
    where = safe_url(search.storage) if search.storage else Path(search.folder) / "study.log"
    head = (f"# esapr tune: the best trial of study {search.study_name} ({where}): trial {trial.number}, "
            f"validation {search.metric} {trial.value:.6g}\n"
            f"# budget {search.budget.describe()} per template; {counted}; trial folder "
            f"{Path(search.folder) / folder_of(trial)}\n"
            f"# esapr train --templates {path}  (or esapr compare --tuned) trains these options\n")
    atomic_write_text(path, head + yaml.safe_dump(best_template(search, trial), sort_keys=False,
                                                  default_flow_style=None))


def plot_history(trials: list[FrozenTrial], metric: str, title: str, caption: str, png: Path,
                 space: Space, trained: bool = True) -> None:
    """Left: each trial's value (complete: its best validation value; pruned: its best before it
    was stopped) and the best so far. Right: each trial's validation per epoch; for a closed-form
    model (one setting a trial), the value against the first searched number."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    fig = Figure(figsize=(11, 4.6))
    left, right = fig.subplots(1, 2)
    done = [t for t in trials if state_of(t) in ("complete", "pruned") and t.intermediate_values]
    best = max((t for t in done if t.state == TrialState.COMPLETE), key=lambda t: t.value, default=None)
    for state, marker in (("complete", "o"), ("pruned", "x")):
        chosen = [t for t in done if state_of(t) == state]
        left.scatter([t.number for t in chosen], [max(t.intermediate_values.values()) for t in chosen],
                     marker=marker, color=COLORS[state], s=28, label=f"{state} ({len(chosen)})", zorder=3)
    running, xs, ys = -math.inf, [], []
    for t in sorted((t for t in done if t.state == TrialState.COMPLETE), key=lambda t: t.number):
        running = max(running, t.value)
        xs.append(t.number)
        ys.append(running)
    if xs:
        last = max(t.number for t in done)
        left.step([*xs, last], [*ys, ys[-1]], where="post", color=COLORS["best"], lw=1.5, label="best so far")
    if best is not None:
        left.scatter([best.number], [best.value], marker="*", s=180, color=COLORS["best"], zorder=4,
                     label=f"best: trial {best.number}, {best.value:.4f}")
    left.set_xlabel("trial")
    left.set_title("each trial", fontsize=10)
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    numbers = [name for name, entry in space.items() if not isinstance(entry, Choice)]
    if trained or not numbers:
        for t in done:
            steps = sorted(t.intermediate_values)
            is_best = best is not None and t.number == best.number
            right.plot(steps, [t.intermediate_values[s] for s in steps], marker="." if len(steps) < 3 else None,
                       color=COLORS["best" if is_best else state_of(t)], lw=2.0 if is_best else 0.9,
                       alpha=1.0 if is_best else 0.6, zorder=3 if is_best else 2)
        right.set_xlabel("epoch")
        right.set_title("each epoch: complete in blue, pruned in grey, the best in orange", fontsize=10)
        right.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        name = numbers[0]
        chosen = [t for t in done if name in t.params]
        right.scatter([t.params[name] for t in chosen], [t.value for t in chosen], color=COLORS["complete"], s=28)
        if best is not None:
            right.scatter([best.params[name]], [best.value], marker="*", s=180, color=COLORS["best"], zorder=4)
        if space[name].log:
            right.set_xscale("log")
        right.set_xlabel(name)
        right.set_title(f"each trial's value against {name}", fontsize=10)
    for axis in (left, right):
        axis.set_ylabel(f"validation {metric}")
        axis.grid(alpha=0.3)
    if done:
        left.legend(loc="best", fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.text(0.5, 0.01, caption, ha="center", va="bottom", fontsize=9, color="0.25")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    save_figure(fig, png, 120)


def plot_importances(study: optuna.Study, title: str, png: Path) -> str | None:
    """Optuna's parameter importances (its default evaluator) as bars; a note instead when there
    are too few complete trials or one parameter."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < MIN_FOR_IMPORTANCES:
        return f"importances skipped: {len(complete)} complete trial(s), at least {MIN_FOR_IMPORTANCES} needed"
    if len({name for t in complete for name in t.params}) < 2:
        return "importances skipped: one parameter searched"
    try:
        importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as error:
        return f"importances skipped: {error}"
    from matplotlib.figure import Figure
    names = list(importances)[::-1]
    fig = Figure(figsize=(7, 0.45 * len(names) + 1.4))
    axis = fig.add_subplot()
    bars = axis.barh(names, [importances[n] for n in names], color="tab:blue")
    axis.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    axis.set_xlim(0, max(importances.values()) * 1.15 + 1e-9)
    axis.set_xlabel("importance (share of the variation of the validation value)")
    axis.set_title(title, fontsize=10)
    axis.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, png, 120)
    return None


def write_report(search: Search, study: optuna.Study) -> StudyReport:
    """trials.csv, history.png, importances.png, summary.json and (once a trial is complete) best.yaml."""
    folder = Path(search.folder)
    trials = study.get_trials(deepcopy=False)
    counts = {state: sum(state_of(t) == state for t in trials) for state in STATES}
    total = sum(float(t.user_attrs.get("train_seconds", 0.0)) for t in trials)
    report = StudyReport(search.template, search.study_name, folder, search.budget.describe(), counts, total)
    files = {"trials": folder / "trials.csv", "history": folder / "history.png", "summary": folder / "summary.json"}
    atomic_write_text(files["trials"], trials_frame(trials).to_csv(index=False))
    counted = (f"{counts['complete'] + counts['pruned']} counted ({counts['complete']} complete, "
               f"{counts['pruned']} pruned)")
    caption = (f"budget {search.budget.describe()}: {counted}, {counts['failed']} failed; {seconds(total)} of training"
               f" | study {search.study_name}")
    plot_history(trials, search.metric, f"{search.template}: validation {search.metric} per trial", caption,
                 files["history"], from_json(search.space), family(search.code).trained)
    note = plot_importances(study, f"{search.template}: parameter importances ({counts['complete']} complete trials)",
                            folder / "importances.png")
    if note is None:
        files["importances"] = folder / "importances.png"
    else:
        report.notes.append(note)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        report.best_trial, report.best_value, report.best_params = best.number, best.value, dict(best.params)
        files["best"] = folder / "best.yaml"
        write_best(search, best, files["best"], counted)
    report.files = files
    storage = safe_url(search.storage) if search.storage else str(folder / "study.log")
    summary = {**{k: v for k, v in asdict(report).items() if k not in ("files", "folder")}, "metric": search.metric,
               "storage": storage, "files": {k: str(v) for k, v in files.items()}}
    atomic_write_text(files["summary"], json.dumps(summary, indent=2))
    return report
