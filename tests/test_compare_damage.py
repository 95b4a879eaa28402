"""esapr compare keeps only what it can trust: a finished run is reused only on the data it was
trained on (its data fingerprint), damaged run files (results.json, test_ranks.csv) leave that run
out as damaged instead of crashing or blaming the data, user ids that look missing read back
exactly, and closed-form models (EASE, SLIST) are shown as one fit over identical seeds."""
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest

import esapr
import esapr.data.prepare as prepare
from esapr.cli import main
from esapr.comparison import Planner, plan_runs, plot_comparison
from esapr.errors import UserError
from esapr.experiment import Experiment
from tests.conftest import tiny
from tests.synthetic import write_ratings_csv
from tests.test_compare_inputs import finished_run

matplotlib.use("Agg")
QUIET = {"progress": "quiet", "say": lambda *a: None}
NA_USERS = ["NA", "null", "NaN", "None", "n/a", "nan", "#N/A", "-NaN"]


@pytest.fixture(scope="module")
def ease_runs(tmp_path_factory):
    """EASE trained by compare over seeds 0 1 2 on a synthetic file whose first users are named as pandas
    reads a missing value: (base folder, options, comparison)."""
    base = tmp_path_factory.mktemp("damage")
    data = write_ratings_csv(base / "ratings.csv", n_users=60, n_items=40)
    lines = data.read_text().splitlines()
    names = dict(zip(map(str, range(1, len(NA_USERS) + 1)), NA_USERS))
    rows = [",".join([names.get(line.split(",")[0], line.split(",")[0]), *line.split(",")[1:]]) for line in lines[1:]]
    data.write_text("\n".join([lines[0], *rows]) + "\n")
    options = {**tiny("train_ease", data), "experiment_root": str(base / "root")}
    return base, options, esapr.compare(["train_ease"], seeds=[0, 1, 2], **QUIET, **options)


def copy_of(base: Path, tmp_path: Path, options: dict) -> dict:
    """The trained root copied (data file and cache shared): the options that point at the copy."""
    shutil.copytree(base / "root", tmp_path / "root")
    return {**options, "experiment_root": str(tmp_path / "root")}


# --- user ids pandas would read as missing ------------------------------------------------------------------
def test_user_ids_that_look_missing_read_back_exactly(ease_runs):
    base, options, result = ease_runs
    assert [o.state for o in result.runs] == ["finished"] and result.n_users == 60
    for outcome in result.runs:
        users = Experiment(outcome.path).read_ranks()["user"].tolist()
        assert set(NA_USERS) <= set(users) and len(set(users)) == 60


def test_hand_made_ranks_with_missing_looking_ids_pair(tmp_path):
    users = NA_USERS + ["", "0", "007"]
    for seed in (0, 1):
        finished_run(tmp_path, "train_vae", seed, np.arange(len(users)) % 7, users=users, num_epochs=3)
    result = esapr.compare(["train_vae"], seeds=[0, 1], aggregate_only=True, experiment_root=str(tmp_path),
                           experiment_group="g", num_epochs=3, say=lambda *a: None)
    assert result.n_users == len(users) and not result.left_out
    assert sorted(Experiment(result.runs[0].path).read_ranks()["user"]) == sorted(users)


# --- closed-form models: one fit whatever the seed ----------------------------------------------------------
def test_closed_form_seeds_are_marked_identical_and_epochs_are_the_grid(ease_runs, tmp_path):
    base, options, result = ease_runs
    model = result.models.set_index("model").loc["EASE"]
    assert model["closed_form"] and model["seeds"] == 1 and [run.path.name for run in result.runs] == ["ease_seed0"]
    best = Experiment(result.runs[0].path).read_results()["best_epoch"]
    text = result.format()
    assert f"  EASE   seed 0 (one fit for every seed, closed form): grid 2 (best {best})," in text
    row = [line for line in result.markdown().splitlines() if line.startswith("| EASE")][0]
    assert row.startswith("| EASE (`train_ease`) | one fit for every seed (closed form) | ")
    assert f"| grid 2 (best {best}) |" in row and "±" not in row
    assert result.table["identical"].all()
    fig = plot_comparison(result)
    texts = {t.get_gid(): t.get_text() for t in fig.findobj(matplotlib.text.Text) if t.get_gid()}
    assert texts["info|epochs (best)|EASE"] == f"grid 2 (best {best})"
    assert texts["info|seeds|EASE"] == "one fit"
    assert "±" not in texts["cell|sampled|EASE|NDCG@10"]
    caption = " ".join(t.get_text() for t in fig.findobj(matplotlib.text.Text) if t.get_gid() == "caption")
    assert "'one fit': a closed-form model fits the same weights whatever the seed, so it is fitted once" in caption
    # a model trained by steps beside it keeps its std and epochs
    options = copy_of(base, tmp_path, options)
    users = Experiment(result.runs[0].path).read_ranks()["user"]
    vae = {**{k: v for k, v in options.items() if k != "ease_lambdas"}, "num_epochs": 5, "experiment_group": "ratings"}
    for seed in (0, 1, 2):
        finished_run(Path(options["experiment_root"]), "train_vae", seed, np.arange(60) % 9, users=users,
                     results={"epochs": 3 + seed}, **{**vae, "experiment_root": options["experiment_root"]})
    both = esapr.compare(["train_ease", "train_vae"], seeds=[0, 1, 2], aggregate_only=True, **QUIET,
                         **{**options, **vae})
    vae = both.models.set_index("model").loc["VAE_tw"]
    assert not vae["closed_form"] and vae["epoch_list"] == "3 4 5"
    assert "VAE_tw   seeds 0 1 2: epochs 3 4 5 (best 2 2 2), 1.5 s per run on cpu, 1 capped" in both.format()
    assert "±" in [line for line in both.markdown().splitlines() if line.startswith("| VAE_tw")][0]


# --- the data a reused run was trained on -------------------------------------------------------------------
def test_a_run_on_other_data_is_refused_not_reused(tmp_path, capsys):
    data = write_ratings_csv(tmp_path / "ratings.csv", n_users=60, n_items=40)
    options = {**tiny("train_ease", data), "experiment_root": str(tmp_path / "root")}
    esapr.compare(["train_ease"], seeds=[0, 1, 2], **QUIET, **options)
    # the same data: reused; the data prepared once for the three runs
    calls = []
    real = prepare.prepare_data
    prepare.prepare_data = lambda config: calls.append(config) or real(config)
    try:
        again = esapr.compare(["train_ease"], seeds=[0, 1, 2], **QUIET, **options)
    finally:
        prepare.prepare_data = real
    assert [o.action for o in again.runs] == ["reused"] and len(calls) == 1
    saved = Experiment(again.runs[0].path).read_config()["data_fingerprint"]
    # one interaction changed: every way of reusing the runs refuses, naming the folder and both fingerprints
    lines = data.read_text().splitlines()
    user, item, *rest = lines[5].split(",")
    lines[5] = ",".join([user, str(int(item) % 40 + 1), *rest])
    data.write_text("\n".join(lines) + "\n")
    folder = Path(options["experiment_root"]) / "ratings" / "ease_seed0"
    for extra in ({}, {"seeds": [0, 1, 2, 3]}, {"aggregate_only": True}, {"dry_run": True}):
        with pytest.raises(UserError) as error:
            esapr.compare(["train_ease"], **{"seeds": [0, 1, 2], **extra}, **QUIET, **options)
        message = str(error.value)
        assert message.startswith(f"{folder} was trained on other data (fingerprint {saved}, now ")
        assert "pass overwrite=True to train it again, or choose another experiment_group='NAME'" in message
        assert "\n" not in message
    assert not (folder.parent / "ease_seed1").exists()
    args = ["compare", "--templates", "train_ease", "--seeds", "0"] + [
        word for name, value in options.items() if name not in ("progress", "say")
        for word in (f"--{name}", *map(str, value if isinstance(value, list) else [value]))]
    assert main(args) == 2
    assert "pass --overwrite to train it again, or choose another --experiment_group NAME" in capsys.readouterr().err
    # --overwrite trains them on the data now; then they are reused again
    trained = esapr.compare(["train_ease"], seeds=[0, 1], overwrite=True, **QUIET, **options)
    assert [o.action for o in trained.runs] == ["overwritten"]
    assert Experiment(folder).read_config()["data_fingerprint"] != saved
    assert [o.action for o in esapr.compare(["train_ease"], seeds=[0, 1], **QUIET, **options).runs] == ["reused"]


def test_the_data_is_prepared_once_per_distinct_data(tmp_path, monkeypatch):
    """Runs of one family share their data; training negatives drawn per seed (SASRec) are data of
    their own: a fingerprint each."""
    calls = []
    monkeypatch.setattr(prepare, "prepare_data",
                        lambda config: calls.append(config) or SimpleNamespace(fingerprint="same"))
    options = {"num_epochs": 3, "data_file": "r.csv"}
    for template in ("train_vae_net", "train_sas"):
        for seed in (0, 1, 2):
            finished_run(tmp_path, template, seed, [0, 1], saved={"data_fingerprint": "same"}, **options)
    planner = Planner()
    runs = plan_runs(["train_vae_net", "train_sas"], [0, 1, 2], {**options, "experiment_root": str(tmp_path),
                                                                  "experiment_group": "g"})
    assert [planner(run).action for run in runs] == ["reuse"] * 6
    assert [c.run.experiment_name for c in calls] == ["vae_net_seed0", "sas_seed0", "sas_seed1", "sas_seed2"]


# --- damaged run files --------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage, note", [
    ('{"epochs": "two", "test": {}}', "damaged (epochs is 'two')"),
    ('{"epochs": null, "test": {}}', "damaged (epochs is None)"),
    ('{"epochs": 1e400, "test": {}}', "damaged (epochs is inf)"),
    ('{"epochs": -2, "test": {}}', "damaged (epochs is -2)"),
    ('{"epochs": 2.5, "test": {}}', "damaged (epochs is 2.5)"),
    ('{"epochs": true, "test": {}}', "damaged (epochs is True)"),
    ('{"test": {}}', "damaged (no epochs)"),
    ('{"epochs": 3, "test": "abc"}', "damaged (test is 'abc')"),
    ('{"epochs": 3', "damaged ("),
    ("[1, 2]", "damaged (not a JSON object)"),
    (None, "missing, though the run says it finished"),
])
def test_a_damaged_results_file_leaves_its_run_out(damage, note, tmp_path, capsys):
    for seed in (0, 1, 2):
        finished_run(tmp_path, "train_vae", seed, [0, 1, 2, 5], num_epochs=3)
    results = tmp_path / "g" / "vae_seed1" / "results.json"
    if damage is None:
        results.unlink()
    else:
        results.write_text(damage)
    common = {"experiment_root": str(tmp_path), "experiment_group": "g", "num_epochs": 3}
    for aggregate_only in (False, True):        # planned (reuse or extend?) and read back
        result = esapr.compare(["train_vae"], seeds=[0, 1, 2], aggregate_only=aggregate_only, **QUIET, **common)
        assert [(o.path.name, o.state) for o in result.left_out] == [("vae_seed1", "damaged")]
        assert note in result.left_out[0].note and "\n" not in result.left_out[0].note
        assert result.models.loc[0, "seeds"] == 2
    args = ["compare", "--templates", "train_vae", "--seeds", "0", "1", "2", "--experiment_root", str(tmp_path),
            "--experiment_group", "g", "--num_epochs", "3", "--quiet"]
    assert main(args) == 1
    out, err = capsys.readouterr()
    assert "damaged (" in out and "vae_seed1" in out
    assert err == "esapr: warning: 1 of 3 runs failed or are damaged; they are left out of the table\n"


def test_results_without_the_optional_keys_still_show(tmp_path):
    for seed in (0, 1):
        finished_run(tmp_path, "train_vae", seed, [0, 1, 2, 5], num_epochs=3)
    path = tmp_path / "g" / "vae_seed1" / "results.json"
    path.write_text(json.dumps({"epochs": 3, "best_epoch": "x", "train_seconds": 1e400}))
    result = esapr.compare(["train_vae"], seeds=[0, 1], aggregate_only=True, experiment_root=str(tmp_path),
                           experiment_group="g", num_epochs=3, **QUIET)
    assert not result.left_out
    model = result.models.iloc[0]
    assert model["best_epoch_list"] == "2 ?" and model["train_seconds"] == 1.5 and model["device"] == "?, cpu"
    assert "| 3 3 (2 ?), 2 capped | 1.5 s |" in result.markdown()
    plot_comparison(result)


def cut_at_line(path: Path, keep: int) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:keep]))


@pytest.mark.parametrize("cut, note", [
    (lambda p: cut_at_line(p, 4), "3 rows for the run's 6 test users: cut short"),
    (lambda p: p.write_text(p.read_text()[:-3]), "a rank that is not a whole number: cut short or edited"),
    (lambda p: cut_at_line(p, 1), "damaged (no rows)"),
    (lambda p: p.write_text(""), "damaged ("),
    (lambda p: p.write_text("user,rank,full_rank\n1,0,0\n1,2,2\n"), "user '1' twice"),
    (lambda p: p.write_text(p.read_text().replace(",0,0", ",-4,0")), "a negative rank"),
    (lambda p: p.write_text(p.read_text().replace(",1,1", ",1.5,1")), "not a whole number"),
    (lambda p: p.unlink(), "no tables/test_ranks.csv"),
])
def test_damaged_test_ranks_leave_their_run_out(cut, note, tmp_path):
    """Not "the test users differ": the run's file is damaged, and the others are compared."""
    for seed in (0, 1, 2):
        finished_run(tmp_path, "train_vae", seed, [0, 1, 2, 5, 3, 9], num_epochs=3)
    cut(tmp_path / "g" / "vae_seed2" / "tables" / "test_ranks.csv")
    result = esapr.compare(["train_vae"], seeds=[0, 1, 2], aggregate_only=True, experiment_root=str(tmp_path),
                           experiment_group="g", num_epochs=3, **QUIET)
    assert [(o.path.name, o.state) for o in result.left_out] == [("vae_seed2", "damaged")]
    assert note in result.left_out[0].note and result.n_users == 6 and result.models.loc[0, "seeds"] == 2
    assert "damaged (" in result.left_out_lines()[0]


def test_a_run_cut_short_without_a_user_count_is_told_by_the_others(tmp_path):
    """A pilot (or an older run) records no test-user count: a run holding part of the others' users was cut
    short; one holding other users is not on the same data (refused, as before)."""
    for seed in (0, 1, 2):
        finished_run(tmp_path, "train_vae", seed, [0, 1, 2, 5, 3, 9], num_epochs=3, saved={"n_users": None})
    cut_at_line(tmp_path / "g" / "vae_seed0" / "tables" / "test_ranks.csv", 3)
    common = {"seeds": [0, 1, 2], "aggregate_only": True, "experiment_root": str(tmp_path), "experiment_group": "g",
              "num_epochs": 3, **QUIET}
    result = esapr.compare(["train_vae"], **common)
    assert [(o.path.name, o.state) for o in result.left_out] == [("vae_seed0", "damaged")]
    assert "cut short: 2 of the 6 test users of vae_seed1" in result.left_out[0].note
    ranks = tmp_path / "g" / "vae_seed1" / "tables" / "test_ranks.csv"
    ranks.write_text(ranks.read_text().replace("\n6,", "\n66,"))
    with pytest.raises(UserError, match="its test users differ from .*cannot be paired"):
        esapr.compare(["train_vae"], **common)
