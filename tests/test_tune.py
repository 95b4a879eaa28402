"""esapr tune on tiny presets and synthetic data: a study of a trained family (VAE_net) and of a
closed-form one (EASE, never pruned: its one step is its whole fit) trains, scores validation only, writes its report and a best.yaml
that ``esapr train`` reproduces exactly; a study continues, refuses changed settings, survives a
killed worker and a killed command; workers share a study without training a trial twice;
``esapr compare --tuned`` takes the best settings; the CLI's refusals are one line."""
import json
import os
import signal
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

import esapr
from esapr.cli import main
from esapr.errors import UserError
from esapr.config import build_config
from esapr.families.base import Choice, Floats, Ints
from esapr.tuning.space import search_spaces, start_values
from esapr.tuning.study import dead
from tests.conftest import as_args, start_cli, tiny

VAE, EASE = "train_vae_net", "train_ease"


def vae_options(data_file, **extra) -> dict:
    return tiny(VAE, data_file, **{"num_epochs": 4, **extra})


def ease_options(data_file) -> dict:
    """EASE's tiny preset without its grid of lambdas (fixed, the grid would leave nothing to search)."""
    return {k: v for k, v in tiny(EASE, data_file).items() if k != "ease_lambdas"}


def study_of(folder: Path) -> optuna.Study | None:
    """The study of a template's tune folder (None before it is made)."""
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage
    path = folder / "study.log"
    if not path.is_file():
        return None
    storage = JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
    names = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=names[0], storage=storage) if names else None


def counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))


def assert_every_trial_accounted_for(folder: Path, budget: int) -> optuna.Study:
    """``budget`` counted trials, each in its own folder, every folder finished (its best weights
    kept, its resume checkpoint dropped) and belonging to exactly one counted trial; nothing left
    running or queued."""
    study = study_of(folder)
    done = counted(study)
    assert len(done) == budget
    folders = [t.user_attrs["folder"] for t in done]
    assert len(set(folders)) == budget
    assert sorted(p.name for p in folder.glob("trial_*")) == sorted(folders)
    for name in folders:
        assert (folder / name / "status").read_text().strip() == "finished", name
        assert (folder / name / "models" / "best_model.pth").is_file(), name
        assert not (folder / name / "models" / "recent_checkpoint.pth").exists(), name
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    return study


# --- a trained family ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vae_study(tmp_path_factory, data_file):
    """A 6-trial study of VAE_net with a pruner that judges from the first epoch; the splits the
    trainer scored meanwhile."""
    root = tmp_path_factory.mktemp("vae_study") / "experiments"
    splits, lines = [], []
    import esapr.training.trainer as trainer
    scored = trainer.evaluate

    def spy(model, batches, config, split, limit=None):
        splits.append(split)
        return scored(model, batches, config, split, limit)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer, "evaluate", spy)
        reports = esapr.tune([VAE], trials=6, progress=False, say=lines.append, experiment_root=str(root),
                             pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
                             **vae_options(data_file))
    return reports[VAE], root, splits, lines


@pytest.mark.slow
def test_a_study_trains_prunes_and_never_scores_the_test_split(vae_study, data_file):
    report, root, splits, lines = vae_study
    folder = root / "ratings" / "tune" / VAE
    assert report.folder == folder and report.budget == "6 trials"
    assert report.counts["complete"] + report.counts["pruned"] == 6
    assert report.counts["complete"] >= 1 and report.counts["pruned"] >= 1 and report.counts["failed"] == 0
    assert set(splits) == {"val"}
    study = assert_every_trial_accounted_for(folder, 6)
    for trial in counted(study):
        run = folder / trial.user_attrs["folder"]
        results = json.loads((run / "results.json").read_text())
        assert "test" not in results and not (run / "tables" / "test_ranks.csv").exists()
        assert (run / "tables" / "val_ranks.csv").is_file() and (run / "models" / "best_model.pth").is_file()
        assert ("stop_reason" in results) == (trial.state == TrialState.PRUNED)
        assert trial.intermediate_values == {int(r["epoch"]): pytest.approx(r["NDCG@10"]) for r in
                                             pd.read_csv(run / "tables" / "val_log.csv").to_dict("records")}
    first = study.trials[0]     # the template's own values, where the space can draw them
    space = search_spaces([VAE], vae_options(data_file))[VAE]
    assert first.user_attrs["template_values"] is True
    start = start_values(space, build_config([VAE], vae_options(data_file)).values())
    assert {"lr", "dropout", "anneal_cap", "weight_type"} <= set(start) and set(first.params) == set(space)
    assert {name: first.params[name] for name in start} == start       # the rest drawn by the sampler
    table = pd.read_csv(folder / "trials.csv")
    assert list(table["trial"]) == list(range(6))
    assert table["state"].value_counts().to_dict() == {k: v for k, v in report.counts.items() if v}
    assert set(table.columns) >= {"lr", "weight_decay", "dropout", "anneal_cap", "weight_type", "train_seconds"}
    assert (folder / "history.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["counts"] == report.counts and summary["train_seconds"] == pytest.approx(report.train_seconds)
    assert any(line.startswith(f"trial {n} pruned at epoch") for n in range(6) for line in lines)


@pytest.mark.slow
def test_the_best_template_reproduces_the_best_trial_exactly(vae_study, data_file, capsys):
    report, root, _, _ = vae_study
    best = report.files["best"]
    text = best.read_text()
    assert text.startswith(f"# esapr tune: the best trial of study {VAE}@ratings")
    assert f"trial {report.best_trial}, validation NDCG@10" in text and "budget 6 trials per template" in text
    values = yaml.safe_load(text)
    assert values["templates"] == [VAE] and values["model_label"] == "VAE_net tuned"
    assert {k: values[k] for k in report.best_params} == report.best_params
    assert values["num_epochs"] == 4 and values["data_file"] == str(Path(data_file).resolve())
    assert main(["train", "--templates", str(best), "--local_data_folder", str(Path(data_file).parent / "data"),
                 "--device", "cpu", "--experiment_root", str(root), "--quiet"]) == 0
    results = json.loads((root / "ratings" / "vae_net_tuned" / "results.json").read_text())
    assert results["best_val"] == report.best_value        # exactly, on the CPU
    assert results["test"]                                  # an ordinary run is tested
    assert "vae_net_tuned" in capsys.readouterr().out


@pytest.mark.slow
def test_a_changed_setting_of_a_study_is_refused_in_one_line(vae_study, data_file, tmp_path):
    _, root, _, _ = vae_study
    same = dict(trials=6, progress=False, say=lambda line: None, experiment_root=str(root), **vae_options(data_file))
    space = tmp_path / "narrow.yaml"
    space.write_text("lr: {low: 0.001, high: 0.01, log: true}\n")
    with pytest.raises(UserError, match=r"another search space: 'lr' \(saved 0.0001..0.01 \(log\), now "
                                        r"0.001..0.01 \(log\)\)"):
        esapr.tune([VAE], space=space, **same)
    with pytest.raises(UserError, match=r"other settings: sampler \(saved 'tpe', now 'random'\)"):
        esapr.tune([VAE], sampler="random", **same)
    with pytest.raises(UserError, match=r"other settings: fixed \(saved \{.*'num_epochs': 4.*\}, now \{.*"
                                        r"'num_epochs': 3.*\}\)"):
        esapr.tune([VAE], **{**same, "num_epochs": 3})
    with pytest.raises(UserError, match=r"has a budget of 6 trials, now 4 trials; a budget can be raised, not lowered"):
        esapr.tune([VAE], **{**same, "trials": 4})
    with pytest.raises(UserError, match=r"has a budget of 6 trials, now 1 h of training"):
        esapr.tune([VAE], hours=1, **{k: v for k, v in same.items() if k != "trials"})


@pytest.mark.slow
def test_running_again_continues_the_study_and_a_raised_budget_extends_it(vae_study, data_file):
    """(Last of the vae_study tests: it adds trials.)"""
    report, root, _, _ = vae_study
    lines = []
    options = dict(progress=False, say=lines.append, experiment_root=str(root),
                   pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1), **vae_options(data_file))
    again = esapr.tune([VAE], trials=6, **options)[VAE]
    assert again.counts == report.counts and again.best_trial == report.best_trial
    assert any("6 counted trial(s) so far" in line and "nothing to train" in line for line in lines)
    more = esapr.tune([VAE], trials=8, **options)[VAE]
    assert more.counts["complete"] + more.counts["pruned"] == 8 and more.budget == "8 trials"
    assert_every_trial_accounted_for(report.folder, 8)


def test_a_study_starts_from_the_values_its_space_can_draw():
    space = {"lr": Floats(1e-4, 1e-2, log=True), "weight_decay": Floats(1e-8, 1e-3, log=True),
             "hidden_units": Choice(32, 64), "max_len": Ints(10, 50), "stop": Choice(True, False),
             "ease_lambdas": Floats(1.0, 1000.0)}
    values = {"lr": 0.001, "weight_decay": 0.0, "hidden_units": 128, "max_len": [20], "stop": 1,
              "ease_lambdas": [10.0, 100.0]}
    assert start_values(space, values) == {"lr": 0.001, "max_len": 20}     # 0.0, 128, 1 and a grid cannot be drawn


# --- a closed-form family, and compare --tuned ------------------------------------------------------
@pytest.mark.slow
def test_a_closed_form_study_fits_a_grid_of_one_setting_and_compare_takes_it(tmp_path, data_file, capsys):
    options = {**ease_options(data_file), "experiment_root": str(tmp_path / "experiments")}
    report = esapr.tune([EASE], trials=4, progress=False, say=lambda line: None, **options)[EASE]
    folder = tmp_path / "experiments" / "ratings" / "tune" / EASE
    study = assert_every_trial_accounted_for(folder, 4)
    for trial in counted(study):
        run = folder / trial.user_attrs["folder"]
        assert json.loads((run / "config.json").read_text())["ease_lambdas"] == [trial.params["ease_lambdas"]]
        assert len(pd.read_csv(run / "tables" / "val_log.csv")) == 1
    assert report.notes == ["importances skipped: one parameter searched"]
    assert yaml.safe_load(report.files["best"].read_text())["ease_lambdas"] == [report.best_params["ease_lambdas"]]
    assert main(["compare", "--templates", EASE, "train_slist", "--seeds", "0", "--tuned", "--metrics", "NDCG@10",
                 *as_args({**options, "max_len": 10})]) == 0
    out = capsys.readouterr().out
    assert f"{EASE}: tuned: {report.files['best']}" in out
    assert f"train_slist: no study ({folder.parent / 'train_slist' / 'best.yaml'} is absent)" in out
    compared = json.loads(next((tmp_path / "experiments" / "ratings").glob("comparison_*.json")).read_text())
    assert [m["model"] for m in compared["models"]] == ["EASE tuned", "SLIST"]
    tuned = json.loads((tmp_path / "experiments" / "ratings" / "ease_tuned_seed0" / "config.json").read_text())
    assert tuned["ease_lambdas"] == [report.best_params["ease_lambdas"]]


def test_trials_and_hours_together_end_the_study_at_whichever_comes_first(tmp_path, data_file):
    options = {**ease_options(data_file), "progress": False, "say": lambda line: None}
    trials_first = esapr.tune([EASE], trials=3, hours=100, experiment_root=str(tmp_path / "a"), **options)[EASE]
    assert trials_first.budget == "3 trials or 100 h of training, whichever comes first"
    assert trials_first.counts["complete"] == 3
    with pytest.raises(UserError, match=r"budget of 3 trials or 100 h of training, whichever comes first, now 3 "
                                        r"trials; continue it with the same kind of budget"):
        esapr.tune([EASE], trials=3, experiment_root=str(tmp_path / "a"), **options)
    hours_first = esapr.tune([EASE], trials=3, hours=1e-9, experiment_root=str(tmp_path / "b"), **options)[EASE]
    assert hours_first.counts["complete"] == 1      # the hours are checked before each trial


@pytest.mark.slow
def test_an_hours_budget_starts_no_trial_once_the_hours_are_spent(tmp_path, data_file):
    lines = []
    options = {**ease_options(data_file), "experiment_root": str(tmp_path)}
    report = esapr.tune([EASE], hours=1e-9, progress=False, say=lines.append, **options)[EASE]
    assert report.budget == "1e-09 h of training" and report.counts["complete"] == 1     # checked before each trial
    said = len(lines)
    again = esapr.tune([EASE], hours=1e-9, progress=False, say=lines.append, **options)[EASE]
    assert again.counts == report.counts and any("nothing to train" in line for line in lines[said:])


# --- the command line --------------------------------------------------------------------------------
@pytest.mark.parametrize("args,message", [
    ([], "tune needs a budget per template: --trials 20 (complete or pruned trials), --hours 2 (of training) or "
         "both (whichever comes first)"),
    (["--trials", "0"], "--trials expects a whole number >= 1, got '0'"),
    (["--hours", "-1"], "--hours expects a number of hours above 0"),
    (["--trials", "2", "--sampler", "grid"], "--sampler is 'grid'; choose tpe or random"),
    (["--trials", "2", "--jobs", "0"], "--jobs expects a whole number >= 1"),
    (["--trials", "2", "--lr", "0.1"], "option 'lr' is read by none of the templates train_ease"),
    (["--trials", "2", "--experiment_name", "x"], "tune sets experiment_name itself"),
    (["--trials", "2", "--ease_lambdas", "10"], "nothing to search for train_ease"),
    (["--trials", "2", "--storage", "postgresql://u:secret@127.0.0.1:1/none"],
     "--storage postgresql://u:***@127.0.0.1"),
])
def test_the_command_refuses_bad_arguments_in_one_line(args, message, data_file, tmp_path, capsys):
    assert main(["tune", "--templates", EASE, "--data_file", str(data_file), "--experiment_root", str(tmp_path),
                 "--test_negative_sample_size", "20", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "secret" not in err
    assert not (tmp_path / "ratings" / "tune" / EASE / "trial_0").exists()


def test_the_command_help_names_its_flags(capsys):
    assert main(["tune", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--trials", "--hours", "--jobs", "--storage", "--space", "--sampler", "--seed"):
        assert flag in out
    assert main(["compare", "--help"]) == 0 and "--tuned" in capsys.readouterr().out


# --- workers that die, and workers that share ---------------------------------------------------------
def wait_for(condition, timeout: float = 180, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def training(folder: Path) -> bool:
    """A live worker's trial is past its second epoch, with a checkpoint (a kill leaves it something to resume)."""
    study = study_of(folder)
    for trial in study.get_trials(states=(TrialState.RUNNING,)) if study else []:
        run = folder / trial.user_attrs.get("folder", "?")
        log = run / "tables" / "val_log.csv"
        if "worker" in trial.user_attrs and dead(trial, folder) is None and log.is_file() and \
                len(log.read_text().splitlines()) >= 3 and (run / "models" / "recent_checkpoint.pth").is_file():
            return True
    return False


@pytest.mark.slow
def test_a_study_killed_twice_ends_with_its_budget_counted_once(tmp_path, data_file):
    """SIGKILL of the worker inside a trial, then of the whole command (--jobs 2): each run of the
    same command continues; the trials of the dead workers are failed, queued again and resume
    their folders; the budget is counted once and no folder is left without a state."""
    options = vae_options(data_file, num_epochs=6, saturation_wait_epochs=6)
    args = ["tune", "--templates", VAE, "--trials", "5", "--experiment_root", str(tmp_path / "experiments"),
            *as_args(options)]
    folder = tmp_path / "experiments" / "ratings" / "tune" / VAE
    worker = start_cli(args, tmp_path)
    wait_for(lambda: training(folder), what="a trial's checkpoint")
    os.kill(worker.pid, signal.SIGKILL)
    worker.communicate()
    killed = study_of(folder).get_trials(states=(TrialState.RUNNING,))
    assert len(killed) == 1
    command = start_cli([*args, "--jobs", "2"], tmp_path)
    wait_for(lambda: training(folder), what="a checkpoint of the next run's trial")
    os.kill(command.pid, signal.SIGKILL)     # the workers stop with it (SIGTERM): their trials are queued again
    command.communicate()
    wait_for(lambda: all(dead(t, folder) for t in study_of(folder).get_trials(states=(TrialState.RUNNING,))),
             timeout=240, what="the workers of the killed command to stop")
    last = start_cli(args, tmp_path)
    out, err = last.communicate(timeout=300)
    assert last.returncode == 0, err
    study = assert_every_trial_accounted_for(folder, 5)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert killed[0].number in [t.number for t in failed] and len(failed) >= 2
    retries = [t for t in counted(study) if "retry_of" in t.user_attrs]
    assert {t.user_attrs["retry_of"] for t in retries} <= {t.number for t in failed}
    said = "\n".join(log.read_text() for log in (folder / "logs").glob("*.log"))    # by the --jobs 2 command
    assert f"trial {killed[0].number} ({killed[0].user_attrs['folder']}): its worker" in said
    for trial in retries:   # resumed: its epochs once each, in order
        epochs = pd.read_csv(folder / trial.user_attrs["folder"] / "tables" / "val_log.csv")["epoch"].tolist()
        assert epochs == list(range(1, len(epochs) + 1))


@pytest.mark.slow
def test_two_local_workers_share_a_study_of_twelve_trials(tmp_path, data_file):
    """--jobs 2, then two commands started by hand on one journal file: 12 distinct trials each time."""
    options = {**vae_options(data_file, num_epochs=2), "experiment_root": str(tmp_path / "experiments")}
    args = ["tune", "--templates", VAE, "--trials", "12", *as_args(options)]
    jobs = start_cli([*args, "--experiment_group", "jobs", "--jobs", "2"], tmp_path)
    out, err = jobs.communicate(timeout=400)
    assert jobs.returncode == 0, err
    study = assert_every_trial_accounted_for(tmp_path / "experiments" / "jobs" / "tune" / VAE, 12)
    assert len({t.user_attrs["worker"] for t in counted(study)}) == 2
    assert sum(line.startswith("trial ") for line in out.splitlines()) == 12     # each said once as it ended
    journal = tmp_path / "shared.log"
    by_hand = [start_cli([*args, "--experiment_group", "hand", "--storage", str(journal)], tmp_path)
               for _ in range(2)]
    for process in by_hand:
        out, err = process.communicate(timeout=400)
        assert process.returncode == 0, err
    folder = tmp_path / "experiments" / "hand" / "tune" / VAE
    assert not (folder / "study.log").exists() and journal.is_file()
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage
    storage = JournalStorage(JournalFileBackend(str(journal), lock_obj=JournalFileOpenLock(str(journal))))
    study = optuna.load_study(study_name=f"{VAE}@hand", storage=storage)
    done = counted(study)
    assert len(done) == 12 and len({t.user_attrs["folder"] for t in done}) == 12
    assert len({t.user_attrs["worker"] for t in done}) == 2
    assert sorted(p.name for p in folder.glob("trial_*")) == sorted(t.user_attrs["folder"] for t in done)


def test_a_study_made_with_one_attribute_per_setting_is_continued_and_checked(data_file, tmp_path):
    """Studies of the version before keep each setting as its own attribute; they are read as
    such (continued with the same settings, refused with another)."""
    options = dict(progress=False, say=lambda line: None, experiment_root=str(tmp_path / "runs"),
                   **ease_options(data_file))
    made = f"sqlite:///{tmp_path / 'made.db'}"
    esapr.tune([EASE], trials=1, storage=made, **options)
    settings = optuna.load_study(study_name=f"{EASE}@ratings", storage=made).user_attrs["settings"]
    older = f"sqlite:///{tmp_path / 'older.db'}"
    study = optuna.create_study(storage=older, study_name=f"{EASE}@ratings", direction="maximize")
    for key, value in settings.items():
        study.set_user_attr(key, value)
    esapr.tune([EASE], trials=1, storage=older, **options)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 1
    with pytest.raises(UserError, match=r"other settings: sampler \(saved 'tpe', now 'random'\)"):
        esapr.tune([EASE], trials=1, storage=older, sampler="random", **options)


@pytest.mark.slow
def test_a_closed_form_trial_is_never_pruned(data_file, tmp_path):
    """Its one step is its whole fit: a pruner that judges from the first step leaves it complete."""
    options = {**ease_options(data_file), "experiment_root": str(tmp_path)}
    esapr.tune([EASE], trials=8, progress=False, say=lambda line: None, seed=3,
               pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0), **options)
    study = study_of(tmp_path / "ratings" / "tune" / EASE)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 8
