"""esapr compare: statistics on hand-made per-user tables with known answers, the paired test
against scipy, the runner's reuse / resume / extension, stale-run refusals, options that apply to
the templates that read them, metrics computed from saved ranks, the CLI and the figure."""
import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

import esapr
from esapr.cli import main
from esapr.colab import plan_run as notebook_plan
from esapr.comparison import (Comparison, RunOutcome, aggregate, bootstrap_interval, compare, compare_models, holm,
                              paired_p_value, plan_run, plan_runs, plot_comparison, pool, protocol_label)
from esapr.comparison.report import set_name
from esapr.config import build_config
from esapr.errors import UserError
from esapr.experiment import Experiment
from esapr.metrics import per_user
from tests.conftest import tiny as tiny_options
from tests.synthetic import write_ratings_csv

matplotlib.use("Agg")


# --- statistics: hand-made tables -------------------------------------------------------------------
def test_per_user_values_follow_the_trainer_definitions():
    ranks = np.array([0, 1, 4, 9, 10, 50])
    assert np.allclose(per_user(ranks, "NDCG@10"), [1, 1 / np.log2(3), 1 / np.log2(6), 1 / np.log2(11), 0, 0])
    assert list(per_user(ranks, "Recall@5")) == [1, 1, 1, 0, 0, 0]
    assert np.allclose(per_user(ranks, "MRR"), 1 / (ranks + 1))
    with pytest.raises(UserError, match="unknown metric"):
        per_user(ranks, "HR@x")


def test_bootstrap_interval_known_answers():
    # no variation at all: the interval is the value
    assert bootstrap_interval(np.full((3, 50), 0.25)) == (0.25, 0.25)
    # two seeds whose users all score 0 and 1: a resample of seeds averages to 0, 0.5 or 1 with
    # probabilities 1/4, 1/2, 1/4, so the 2.5 and 97.5 percentiles are exactly 0 and 1
    assert bootstrap_interval(np.stack([np.zeros(40), np.ones(40)])) == (0.0, 1.0)
    # one seed: the user bootstrap of a mean of 0/1 values follows the normal approximation
    rng = np.random.default_rng(1)
    hits = (rng.random(2000) < 0.3).astype(float)
    low, high = bootstrap_interval(hits, n_boot=4000)
    half = 1.96 * hits.std() / np.sqrt(len(hits))
    assert low == pytest.approx(hits.mean() - half, abs=0.004) and high == pytest.approx(hits.mean() + half, abs=0.004)
    # the same seed, the same interval (the figure and the CSV agree run after run)
    assert bootstrap_interval(hits, seed=3) == bootstrap_interval(hits, seed=3)


def test_holm_adjustment_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01, 2 x 0.03, max(previous, 1 x 0.04)
    assert np.allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    assert np.allclose(holm([0.5, 0.9]), [1.0, 1.0])
    assert np.allclose(holm([0.2]), [0.2])


def test_paired_test_is_scipys_wilcoxon_and_marks_follow_it():
    rng = np.random.default_rng(0)
    best = rng.random(200)
    worse = best - 0.05 - 0.01 * rng.random(200)        # every user lower: clearly worse
    noise = rng.normal(0, 0.05, 100)
    tied = best - np.concatenate([noise, -noise])         # symmetric differences: no evidence
    assert paired_p_value(best, worse) == wilcoxon(best - worse).pvalue
    assert paired_p_value(best, tied) == wilcoxon(best - tied).pvalue
    assert paired_p_value(best, best) == 1.0                # nothing tells them apart
    stats = {s.model: s for s in compare_models({"A": best[None], "B": worse[None], "C": tied[None]})}
    assert stats["A"].mark == "best" and np.isnan(stats["A"].p_value)
    assert stats["B"].mark == "worse" and stats["B"].p_holm < 1e-10
    assert stats["C"].mark == "tied" and stats["C"].p_holm > 0.5
    raw = [wilcoxon(best - worse).pvalue, wilcoxon(best - tied).pvalue]
    assert [stats["B"].p_holm, stats["C"].p_holm] == pytest.approx(list(holm(raw)))


def test_compare_models_mean_std_over_seeds():
    # seed means 0.5 and 0.7 (users 1/0 patterns): mean 0.6, sample std 0.1414
    a = np.array([[1, 0] * 5, [1, 1, 1, 0, 1, 0, 1, 0, 1, 1]], dtype=float)
    b = np.array([[0] * 10], dtype=float)
    stats = {s.model: s for s in compare_models({"a": a, "b": b})}
    assert stats["a"].mean == pytest.approx(0.6) and stats["a"].std == pytest.approx(np.sqrt(0.02))
    assert stats["a"].seeds == 2 and stats["b"].seeds == 1 and np.isnan(stats["b"].std)
    assert stats["b"].ci_low == stats["b"].ci_high == 0.0
    assert stats["a"].ci_low < 0.6 < stats["a"].ci_high


def test_saved_json_keeps_small_p_values_and_nan_as_null():
    # a clear loser on 943 users has p ~ 1e-15: the JSON must not round it to 0 (to_json keeps 10 decimals)
    table = pd.DataFrame({"protocol": ["full", "full"], "metric": ["MRR", "MRR"], "model": ["A", "B"],
                          "mean": [0.3, 0.1], "p_holm": [float("nan"), 2.29e-15], "seeds": [5, 1]})
    models = pd.DataFrame({"model": ["A", "B"], "seed_list": ["0 1 2 3 4", "0"], "train_seconds": [807.04, 12872.7]})
    saved = json.loads(json.dumps(Comparison(table, models, [], {"full": "Full"}, "hand", 943).to_dict()))
    assert [row["p_holm"] for row in saved["table"]] == [None, 2.29e-15]
    assert saved["table"][1]["seeds"] == 1 and saved["models"][1] == {"model": "B", "seed_list": "0",
                                                                      "train_seconds": 12872.7}


def fake_run(root: Path, template: str, seed: int, ranks, full_ranks, epochs=3, num_epochs=3, status="finished",
             users=None) -> RunOutcome:
    """An experiment folder without training: config, results, status and per-user ranks."""
    config = build_config([template], {"experiment_root": str(root), "experiment_group": "g", "num_epochs": num_epochs,
                                       "experiment_name": f"{template}_seed{seed}"})
    experiment = Experiment(root / "g" / config.run.experiment_name)
    experiment.start(config, {"n_users": len(ranks)})
    users = np.arange(1, len(ranks) + 1) if users is None else users
    experiment.write_ranks("test", users, np.asarray(ranks), np.asarray(full_ranks))
    results = {"test": {"NDCG@10": 0.0}, "epochs": epochs, "best_epoch": epochs - 1, "train_seconds": 10.0 * seed + 5,
               "device": "cpu", "dataset": "hand"}
    experiment.write_results(results)
    experiment.set_status(status)
    return RunOutcome(template, seed, experiment.path, "finished" if status == "finished" else status,
                      results=results if status == "finished" else None, capped=epochs >= num_epochs)


def test_aggregate_hand_made_rank_tables(tmp_path):
    # 4 users. Model A (2 seeds): sampled ranks [0,0,5,20] and [0,3,20,20] -> Recall@1 0.5 and 0.25.
    # Model B (1 seed): [20,20,20,0] -> Recall@1 0.25. The full ranks are 10x the sampled ones.
    a0 = fake_run(tmp_path, "train_vae", 0, [0, 0, 5, 20], [0, 0, 50, 200])
    a1 = fake_run(tmp_path, "train_vae", 1, [0, 3, 20, 20], [0, 30, 200, 200])
    b0 = fake_run(tmp_path, "train_bert", 0, [20, 20, 20, 0], [200, 200, 200, 0], epochs=2)
    gone = fake_run(tmp_path, "train_bert", 1, [0, 0, 0, 0], [0, 0, 0, 0], status="running")
    result = aggregate([a0, a1, b0, gone], {"train_vae": "VAE_tw", "train_bert": "BERT4Rec"})
    table = result.table.set_index(["protocol", "metric", "model"])
    assert list(result.protocols) == ["full", "sampled"]
    assert table.loc[("sampled", "Recall@1", "VAE_tw"), "mean"] == pytest.approx(0.375)
    assert table.loc[("sampled", "Recall@1", "VAE_tw"), "std"] == pytest.approx(np.std([0.5, 0.25], ddof=1))
    assert table.loc[("sampled", "Recall@1", "BERT4Rec"), "mean"] == pytest.approx(0.25)
    expected = np.mean([np.mean([1, 1, 1 / np.log2(7), 0]), np.mean([1, 1 / np.log2(5), 0, 0])])
    assert table.loc[("sampled", "NDCG@10", "VAE_tw"), "mean"] == pytest.approx(expected)
    assert table.loc[("sampled", "NDCG@10", "VAE_tw"), "mark"] == "best"
    assert table.loc[("full", "Recall@5", "VAE_tw"), "mean"] == pytest.approx(0.375)   # 2 of 4 | 1 of 4
    assert table.loc[("full", "MRR", "BERT4Rec"), "mean"] == pytest.approx((3 / 201 + 1) / 4)
    models = result.models.set_index("model")
    assert models.loc["VAE_tw", "seeds"] == 2 and models.loc["VAE_tw", "train_seconds"] == pytest.approx(10.0)
    assert models.loc["VAE_tw", "capped"] == 2 and models.loc["BERT4Rec", "capped"] == 0
    assert [r.path.name for r in result.left_out] == ["train_bert_seed1"]
    assert result.n_users == 4 and result.dataset == "hand"
    # the Markdown table: a row per model, full then sampled, the best in bold, the left-out runs named
    legend, blank, *lines = result.markdown(["Recall@1"]).splitlines()
    assert legend.startswith("hand, 4 test users. Cells: mean ± standard deviation over seeds") and blank == ""
    assert lines[0] == ("| model (template) | seeds | full Recall@1 | sampled Recall@1 | epochs (best) | "
                        "training per run |")
    assert lines[2].startswith("| VAE_tw (`train_vae`) | 2 | **0.3750 ± 0.1768** [") and lines[2].count("best") == 2
    # one seed: no std; 1 of 4 users hit, so a user resample's mean is >= 0.75 with probability 0.051 and
    # 1 with 0.004: the 97.5 % bound is 0.75
    assert lines[3] == ("| BERT4Rec (`train_bert`) | 1 | 0.2500 [0.000, 0.750] n.s. | 0.2500 [0.000, 0.750] n.s. | "
                        "2 (1) | 5.0 s |")
    assert lines[-1] == "Left out: running: train_bert_seed1."
    # runs on other users cannot be paired
    other = fake_run(tmp_path / "x", "train_vae", 2, [0, 0, 0, 0], [0, 0, 0, 0], users=np.array([1, 2, 3, 9]))
    with pytest.raises(UserError, match="cannot be paired"):
        aggregate([a0, other], {"train_vae": "VAE_tw"})


def test_protocol_labels_name_the_sampling():
    assert protocol_label("full").startswith("Full ranking")
    assert protocol_label("sampled", "popular", 100) == ("Popularity-sampled (100 popular negatives, "
                                                          "the original paper's protocol)")
    assert protocol_label("sampled", "random", 100) == "Uniform-sampled (100 random negatives)"


# --- the runner on tiny data -----------------------------------------------------------------------------
def options_of(data: Path, *templates: str, **extra) -> dict:
    """The tiny presets of the templates' families on ``data``, 2 epochs (capped, not stopped)."""
    merged = {}
    for template in templates:
        merged.update(tiny_options(template, data))
    return {**merged, "num_epochs": 2, "saturation_wait_epochs": 10, **extra}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A folder and the VAE_net options on its ratings file."""
    base = tmp_path_factory.mktemp("compare")
    data = write_ratings_csv(base / "ratings.csv", n_users=60, n_items=40)
    return base, options_of(data, "train_vae_net")


@pytest.fixture(scope="module")
def trained(tiny):
    """Two templates x two seeds, trained once for the tests below (copy the root to change it);
    ``options``: VAE_net's and SASRec's."""
    base, _ = tiny
    root = base / "root"
    options = options_of(base / "ratings.csv", "train_vae_net", "train_sas")
    result = compare(["train_vae_net", "train_sas"], seeds=[0, 1], experiment_root=str(root), progress="quiet",
                     say=lambda *a: None, **options)
    return root, options, result


def test_compare_trains_each_template_and_seed_into_its_folder(trained):
    root, options, result = trained
    assert [(o.template, o.seed, o.action, o.state) for o in result.runs] == [
        ("train_vae_net", 0, "trained", "finished"), ("train_vae_net", 1, "trained", "finished"),
        ("train_sas", 0, "trained", "finished"), ("train_sas", 1, "trained", "finished")]
    for outcome in result.runs:
        saved = Experiment(outcome.path).read_config()
        assert outcome.path.parent == root / "ratings"
        # one seed sets every seed the family reads (VAE_net has no training negatives); the evaluation
        # negatives stay fixed; each run keeps its template's metric_ks
        seeds = ("model_init_seed", "dataloader_random_seed") + ("train_negative_sampling_seed",) * \
            (outcome.template == "train_sas")
        assert {saved[k] for k in seeds} == {outcome.seed} and set(seeds) <= set(saved)
        assert ("train_negative_sampling_seed" in saved) == (outcome.template == "train_sas")
        assert saved["test_negative_sampling_seed"] == 98765
        assert saved["metric_ks"] == ([1, 5, 10, 20, 50, 100] if outcome.template == "train_vae_net"
                                      else [1, 5, 10, 20, 50])
        assert outcome.capped     # 2 epochs, no early stop
    # the table's means are the runs' own test metrics (paired per-user values reproduce them); SASRec's
    # Recall@100, which its template does not ask for, computed from its ranks and added to results.json
    table = result.table.set_index(["protocol", "metric", "model"]).sort_index()
    for protocol, prefix in (("sampled", ""), ("full", "full_")):
        for metric in ("NDCG@10", "Recall@100", "MRR"):
            runs = [Experiment(o.path).read_results()["test"][prefix + metric] for o in result.runs[2:]]
            assert table.loc[(protocol, metric, "SASRec"), "mean"] == pytest.approx(np.mean(runs))
    assert set(table.loc[("sampled", "NDCG@10"), "mark"]) <= {"best", "tied", "worse"}
    for kind in ("csv", "json", "md", "png"):
        name = set_name(["train_vae_net", "train_sas"])
        assert result.files[kind] == root / "ratings" / f"{name}.{kind}" and result.files[kind].is_file()
    saved = json.loads(result.files["json"].read_text())
    assert saved["protocols"]["sampled"].startswith("Popularity-sampled (20 popular") and len(saved["runs"]) == 4
    csv = pd.read_csv(result.files["csv"])
    assert {"protocol", "metric", "model", "mean", "std", "ci_low", "ci_high", "p_holm", "mark", "epochs",
            "best_epoch", "train_seconds", "device", "capped"} <= set(csv.columns)
    assert list(dict.fromkeys(csv["protocol"])) == ["full", "sampled"]


def test_second_compare_reuses_every_run(trained):
    root, options, _ = trained
    before = {p: p.stat().st_mtime_ns for p in root.rglob("best_model.pth")}
    again = compare(["train_vae_net", "train_sas"], seeds=[0, 1], experiment_root=str(root), progress="quiet",
                    say=lambda *a: None, **options)
    assert [o.action for o in again.runs] == ["reused"] * 4
    assert before == {p: p.stat().st_mtime_ns for p in root.rglob("best_model.pth")}


def test_more_metric_ks_reuse_every_run_and_are_computed_from_the_ranks(trained, tmp_path):
    root, options, _ = trained
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    result = compare(["train_vae_net", "train_sas"], seeds=[0, 1], experiment_root=str(copy), progress="quiet",
                     say=lambda *a: None, **{**options, "metric_ks": [1, 3, 5, 10, 20, 30, 50, 100]})
    assert [o.action for o in result.runs] == ["reused"] * 4
    table = result.table.set_index(["protocol", "metric", "model"])
    for protocol, column, prefix in (("sampled", "rank", ""), ("full", "full_rank", "full_")):
        for model, runs in (("VAE_net", result.runs[:2]), ("SASRec", result.runs[2:])):
            experiments = [Experiment(o.path) for o in runs]
            from_ranks = [per_user(e.read_ranks()[column].to_numpy(), "Recall@30").mean() for e in experiments]
            assert table.loc[(protocol, "Recall@30", model), "mean"] == pytest.approx(np.mean(from_ranks))
            # each run's results.json gained the new metrics; its options are as they were
            assert [e.read_results()["test"][prefix + "NDCG@3"] for e in experiments] == \
                [o.results["test"][prefix + "NDCG@3"] for o in runs]
            assert all(3 not in e.read_config()["metric_ks"] for e in experiments)
    saved = json.loads(result.files["json"].read_text())
    assert "full_Recall@30" in saved["runs"][0]["test"]


def test_an_option_applies_to_the_templates_whose_family_reads_it(tiny, tmp_path):
    """EASE (closed form) beside VAE_net with lr, dropout and num_epochs: EASE's finished runs are
    reused (it reads none of them), VAE_net's are trained with them; an option no template reads
    is refused."""
    base, _ = tiny
    data, root = base / "ratings.csv", str(tmp_path / "root")
    quiet = {"progress": "quiet", "say": lambda *a: None, "experiment_root": root}
    first = compare(["train_ease"], seeds=[0, 1], **quiet, **tiny_options("train_ease", data))
    assert [(o.action, o.path.name) for o in first.runs] == [("trained", "ease_seed0")]   # one fit, any seed
    # a run saved by an earlier version recorded the grid as epochs: still reused, not extended
    config_file = Experiment(first.runs[0].path).config_file
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "num_epochs": 2, "lr": 0.001}))
    options = options_of(data, "train_ease", "train_vae_net", lr=0.002, dropout=0.3)
    result = compare(["train_ease", "train_vae_net"], seeds=[0, 1], **quiet, **options)
    assert [(o.template, o.action, o.state) for o in result.runs] == [
        ("train_ease", "reused", "finished"), ("train_vae_net", "trained", "finished"),
        ("train_vae_net", "trained", "finished")]
    ease = Experiment(result.runs[0].path).read_config()      # as written above: lr 0.002 did not reach it
    assert ease["lr"] == 0.001 and not {"dropout", "model_init_seed"} & set(ease)
    vae = Experiment(result.runs[1].path).read_config()
    assert (vae["lr"], vae["dropout"], vae["num_epochs"]) == (0.002, 0.3, 2)
    assert list(result.models["model"]) == ["EASE", "VAE_net"]
    runs = plan_runs(["train_ease", "train_vae_net"], [0], {**options, "experiment_root": root})
    assert "--lr" not in runs[0].command() and "--lr" in runs[1].command()
    # an option that no template reads: refused in one line, nothing written
    with pytest.raises(UserError) as error:
        compare(["train_ease", "train_vae_net"], seeds=[0], **quiet, **{**options, "hidden_units": 8},
                experiment_group="elsewhere")
    message = str(error.value)
    assert message.startswith("option 'hidden_units' is read by none of the templates train_ease, train_vae_net "
                              "(read by ") and "\n" not in message
    assert not (tmp_path / "root" / "elsewhere").exists()


def test_compare_resumes_unfinished_and_extends_a_raised_epoch_limit(trained, tiny, tmp_path):
    root, _, _ = trained
    _, options = tiny
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    folder = copy / "ratings" / "vae_net_seed1"
    Experiment(folder).set_status("interrupted")
    result = compare(["train_vae_net"], seeds=[0, 1], experiment_root=str(copy), progress="quiet",
                     say=lambda *a: None, **options)
    assert [o.action for o in result.runs] == ["reused", "resumed"]
    assert Experiment(folder).status() == "finished"
    # raising num_epochs extends the finished runs (as esapr train --resume --num_epochs 3)
    result = compare(["train_vae_net"], seeds=[0, 1], experiment_root=str(copy), progress="quiet",
                     say=lambda *a: None, **{**options, "num_epochs": 3})
    assert [o.action for o in result.runs] == ["extended", "extended"]
    for outcome in result.runs:
        assert outcome.results["epochs"] == 3 and Experiment(outcome.path).read_config()["num_epochs"] == 3
        assert [int(r["epoch"]) for r in Experiment(outcome.path).read_table("val_log")] == [1, 2, 3]
    again = compare(["train_vae_net"], seeds=[0, 1], experiment_root=str(copy), progress="quiet",
                    say=lambda *a: None, **{**options, "num_epochs": 3})
    assert [o.action for o in again.runs] == ["reused", "reused"]


def test_stale_runs_are_refused_with_both_values(trained, tiny, tmp_path):
    root, _, _ = trained
    base, options = tiny
    config = plan_runs(["train_vae_net"], [0], {**options, "experiment_root": str(root)})[0].config
    assert plan_run(config).action == "reuse"
    # another option
    changed = plan_runs(["train_vae_net"], [0], {**options, "experiment_root": str(root), "lr": 0.01})[0].config
    with pytest.raises(UserError) as error:
        plan_run(changed)
    message = str(error.value)
    assert "vae_net_seed0 holds a finished run with other options: lr (saved 0.005, now 0.01)" in message
    assert "--overwrite" in message and "\n" not in message
    assert plan_run(changed, overwrite=True).action == "overwrite"
    # another dataset: its own folder by default, and refused where the folder is shared
    other = write_ratings_csv(tmp_path / "other.csv", n_users=50, n_items=40, seed=1)
    moved = plan_runs(["train_vae_net"], [0], {**options, "experiment_root": str(root), "data_file": str(other)})
    assert moved[0].path == root / "other" / "vae_net_seed0" and plan_run(moved[0].config).action == "start"
    shared = plan_runs(["train_vae_net"], [0], {**options, "experiment_root": str(root), "data_file": str(other),
                                                "experiment_group": "ratings"})[0].config
    with pytest.raises(UserError, match=r"data_file \(saved '.*ratings.csv', now '.*other.csv'\)"):
        plan_run(shared)
    # fewer epochs than the run already has
    fewer = plan_runs(["train_vae_net"], [0], {**options, "experiment_root": str(root), "num_epochs": 1})[0].config
    with pytest.raises(UserError, match="more than num_epochs 1"):
        plan_run(fewer)
    # the notebook's wording
    with pytest.raises(UserError, match="set OVERWRITE = True"):
        notebook_plan(changed)
    higher = plan_runs(["train_vae_net"], [0], {**options, "experiment_root": str(root), "num_epochs": 4})[0].config
    action, planned = notebook_plan(higher)
    assert action == "extend" and planned.run.resume and planned.num_epochs == 4
    assert notebook_plan(config) == ("show", config)


def test_a_run_that_stopped_early_is_reused_for_any_higher_limit(tmp_path):
    outcome = fake_run(tmp_path, "train_vae", 0, [0, 1], [0, 1], epochs=7, num_epochs=50)
    config = build_config(["train_vae"], {"experiment_root": str(tmp_path), "experiment_group": "g",
                                          "experiment_name": outcome.path.name, "num_epochs": 80})
    assert plan_run(config).action == "reuse"
    assert plan_run(build_config(["train_vae"], {**_options(config), "num_epochs": -1})).action == "reuse"
    assert plan_run(build_config(["train_vae"], {**_options(config), "num_epochs": 7})).action == "reuse"
    with pytest.raises(UserError, match="more than num_epochs 6"):
        plan_run(build_config(["train_vae"], {**_options(config), "num_epochs": 6}))


def test_a_run_extended_by_hand_is_judged_by_its_epochs(tmp_path):
    """esapr train --resume --num_epochs 10 on a run saved with num_epochs 3 (config.json keeps 3):
    asking for 3 epochs must not reuse the 10-epoch run."""
    outcome = fake_run(tmp_path, "train_vae", 0, [0, 1], [0, 1], epochs=10, num_epochs=3)
    config = build_config(["train_vae"], {"experiment_root": str(tmp_path), "experiment_group": "g",
                                          "experiment_name": outcome.path.name, "num_epochs": 3})
    with pytest.raises(UserError, match="a finished run of 10 epochs, more than num_epochs 3; ask for num_epochs 10"):
        plan_run(config)
    assert plan_run(build_config(["train_vae"], {**_options(config), "num_epochs": 10})).action == "reuse"
    with pytest.raises(UserError, match="no checkpoint to extend to 12"):
        plan_run(build_config(["train_vae"], {**_options(config), "num_epochs": 12}))
    (outcome.path / "models" / "recent_checkpoint.pth").write_bytes(b"x")
    plan = plan_run(build_config(["train_vae"], {**_options(config), "num_epochs": 12}))
    assert plan.action == "extend" and plan.config.run.resume and plan.config.num_epochs == 12


def _options(config):
    return {k: getattr(config.run, k) for k in ("experiment_root", "experiment_group", "experiment_name")}


def test_a_failed_run_is_left_out_and_listed(trained, tmp_path, monkeypatch):
    root, options, _ = trained
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    shutil.rmtree(copy / "ratings" / "sas_seed1")
    import esapr.training.trainer as trainer

    def broken(config, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)\nmore")
    monkeypatch.setattr(trainer, "train", broken)
    result = compare(["train_vae_net", "train_sas"], seeds=[0, 1], experiment_root=str(copy), progress="quiet",
                     say=lambda *a: None, **options)
    assert [(o.path.name, o.state, o.note) for o in result.left_out] == [
        ("sas_seed1", "failed", "CUDA out of memory (simulated)")]
    assert result.models.set_index("model").loc["SASRec", "seeds"] == 1
    texts = [t.get_text() for t in plot_comparison(result).findobj(matplotlib.text.Text) if t.get_gid() == "left_out"]
    assert "failed (CUDA out of memory (simulated)): sas_seed1" in " ".join(texts)


# --- CLI and API ------------------------------------------------------------------------------------------
def cli_args(options: dict) -> list[str]:
    args = []
    for name, value in options.items():
        args += [f"--{name}", *(map(str, value) if isinstance(value, list) else [str(value)])]
    return args


def test_cli_compare_dry_run_prints_train_commands_that_aggregate_only_reads(tiny, tmp_path, capsys):
    base, options = tiny
    root = tmp_path / "root"
    args = ["compare", "--templates", "train_vae_net", "--seeds", "3", "4", "--experiment_root", str(root),
            *cli_args(options)]
    assert main(args + ["--dry_run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert not root.exists()                                 # a dry run writes nothing
    assert len(lines) == 3 and lines[0].startswith("esapr train --templates train_vae_net ")
    assert "--experiment_name vae_net_seed3 --model_init_seed 3 --dataloader_random_seed 3" in lines[0]
    assert "--train_negative_sampling_seed" not in lines[0]        # VAE_net draws no training negatives
    assert lines[2].startswith("# afterwards: esapr compare --templates train_vae_net --seeds 3 4 ")
    assert lines[2].endswith("--aggregate_only")
    # a scheduler runs the first command; aggregating lists the other as not trained yet
    assert main(lines[0].split()[1:] + ["--quiet"]) == 0
    capsys.readouterr()
    assert main(args + ["--aggregate_only"]) == 0
    out = capsys.readouterr().out
    assert "left out:\n  missing (not trained yet): vae_net_seed4" in out
    assert (root / "ratings" / f"{set_name(['train_vae_net'])}.png").is_file()
    # again as a dry run: the finished one is reused, the other still to train
    assert main(args + ["--dry_run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# ") and lines[0].endswith("finished (2 epochs), reused")
    assert lines[1].startswith("esapr train ") and "--experiment_name vae_net_seed4" in lines[1]


def test_a_template_can_run_only_the_first_seeds(tiny, tmp_path):
    """``train_sas:1`` beside a template of all seeds: a slow model over fewer seeds, same options."""
    base, _ = tiny
    options = options_of(base / "ratings.csv", "train_vae_net", "train_sas")
    runs = plan_runs(["train_vae_net", "train_sas:1"], [3, 4, 5], {**options, "experiment_root": str(tmp_path)})
    assert [(r.template, r.seed, r.name) for r in runs] == [
        ("train_vae_net", 3, "vae_net_seed3"), ("train_vae_net", 4, "vae_net_seed4"), ("train_vae_net", 5, "vae_net_seed5"),
        ("train_sas", 3, "sas_seed3")]
    assert runs[3].command()[:4] == ["esapr", "train", "--templates", "train_sas"]
    assert "--encode_len" in runs[0].command() and "--encode_len" not in runs[3].command()   # what each reads
    alone = plan_runs(["train_sas"], [3], {**options_of(base / "ratings.csv", "train_sas"),
                                            "experiment_root": str(tmp_path)})
    assert alone[0].config == runs[3].config          # the same run a separate compare of it would train
    # a pilot's runs have folders of their own, named once whether the template names its runs or not
    (tmp_path / "mine.yaml").write_text("model_code: ease\n")
    pilots = plan_runs(["train_ease", str(tmp_path / "mine.yaml")], [3], {"pilot": True, "data_file": "r.csv"})
    assert [r.name for r in pilots] == ["ease_seed3_pilot", "mine_seed3_pilot"]


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0"], "compare needs templates"),
    (["--templates", "train_vae", "--seeds", "x"], "--seeds expects whole numbers, got 'x'"),
    (["--templates", "train_vae", "--seeds", "1", "1"], "a seed is named twice"),
    (["--templates", "train_vae", "--model_init_seed", "3"], "compare sets model_init_seed itself"),
    (["--templates", "train_vae", "--experiment_name", "x"], "compare sets experiment_name itself"),
    (["--templates", "train_vae", "--jobs", "0"], "--jobs must be at least 1"),
    (["--templates", "train_vea"], "unknown template 'train_vea' (did you mean 'train_vae'?)"),
    (["--templates", "train_vae:3", "--seeds", "0", "1"], "--templates train_vae:3: the number after ':' is how "
                                                          "many of the 2 seeds train_vae runs; allowed: 1 to 2"),
    (["--templates", "train_vae:0"], "allowed: 1 to 5"),
    (["--templates", "train_vae", "train_vae:1"], "a template is named twice"),
    (["--templates", "train_vae", "--lrr", "1"], "unknown option '--lrr' (did you mean 'lr'?)"),
    (["--templates", "train_ease", "train_slist", "--lr", "0.01"],
     "option 'lr' is read by none of the templates train_ease, train_slist (read by "),
])
def test_cli_compare_bad_input_is_one_line(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["compare", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("esapr: error: ") and err.count("\n") == 1 and message in err
    assert not any(tmp_path.iterdir())


def test_cli_help_lists_compare(capsys):
    assert main(["--help"]) == 0
    assert "compare" in capsys.readouterr().out
    assert main(["compare", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--seeds" in out and "--jobs" in out and "--dry_run" in out and "--aggregate_only" in out


def test_esapr_compare_is_callable_from_the_package():
    assert callable(esapr.compare)
    assert "compare" in esapr.__all__


def test_esapr_compare_stays_the_function_after_importing_the_package():
    import esapr.comparison
    assert inspect.isfunction(esapr.compare) and esapr.compare is esapr.comparison.compare
    from esapr import compare as imported
    assert imported is esapr.comparison.compare


# --- the figure --------------------------------------------------------------------------------------------
def test_plot_comparison_marks_best_and_tied_blocks_in_order(tmp_path):
    rows = []
    for protocol in ("full", "sampled"):
        for model, mean, mark in (("VAE_tw", 0.30, "best"), ("SASRec", 0.29, "tied"), ("VAE_net", 0.20, "worse")):
            rows.append({"protocol": protocol, "metric": "NDCG@10", "model": model, "mean": mean, "std": 0.01,
                         "ci_low": mean - 0.02, "ci_high": mean + 0.02, "seeds": 2, "p_value": 0.5, "p_holm": 0.5,
                         "mark": mark})
    models = pd.DataFrame([{"model": m, "template": t, "seeds": 2, "seed_list": "0 1", "epochs": e, "epoch_list": el,
                            "best_epoch": 2.0, "best_epoch_list": "2 2", "train_seconds": 125.0, "device": "cpu",
                            "capped": c, "closed_form": False, "paths": ""}
                           for m, t, e, el, c in (("VAE_tw", "train_vae", 3.0, "3 3", 2),
                                                  ("SASRec", "train_sas", 30.0, "25 35", 0),
                                                  ("VAE_net", "train_vae_net", 9.0, "9 9", 0))])
    comparison = Comparison(pd.DataFrame(rows), models, [], {"full": protocol_label("full"),
                                                            "sampled": protocol_label("sampled", "random", 100)},
                            "ml-100k", 943, {"seeds": [0, 1]})
    png = tmp_path / "t.png"
    fig = plot_comparison(comparison, png)
    assert png.read_bytes()[:4] == b"\x89PNG"
    texts = {t.get_gid(): t for t in fig.findobj(matplotlib.text.Text) if t.get_gid()}
    best = texts["cell|full|VAE_tw|NDCG@10"]
    assert best.get_text() == "0.3000 ± 0.0100" and best.get_fontweight() in ("bold", 700)
    assert texts["cell|sampled|SASRec|NDCG@10"].get_fontweight() not in ("bold", 700)
    assert texts["ci|full|VAE_net|NDCG@10"].get_text() == "[0.1800, 0.2200]"
    shades = {p.get_gid() for p in fig.findobj(matplotlib.patches.Rectangle) if (p.get_gid() or "").startswith("shade")}
    assert shades == {f"shade|{p}|{m}|NDCG@10" for p in ("full", "sampled") for m in ("VAE_tw", "SASRec")}
    # full ranking is the first block, the uniform-sampled block below it
    assert texts["block|full"].get_position()[1] < texts["block|sampled"].get_position()[1]
    assert texts["block|sampled"].get_text() == "Uniform-sampled (100 random negatives)"
    assert texts["info|epochs (best)|VAE_tw"].get_text() == "3 (2), capped 2/2"
    assert texts["info|epochs (best)|SASRec"].get_text() == "25-35 (2)"
    assert texts["info|training time per run|SASRec"].get_text() == "2.1 min"
    # the caption is whole: every line inside the figure (measured on a figure not yet saved at 150 dpi)
    fig = plot_comparison(comparison)
    fig.canvas.draw()
    width = fig.get_window_extent().width
    for text in fig.findobj(matplotlib.text.Text):
        if text.get_text():
            box = text.get_window_extent()
            assert box.x0 >= 0 and box.x1 <= width + 0.5, text.get_text()


def test_a_childs_torch_takes_the_thread_share_it_is_given():
    """The environment of a --jobs child reaches torch: cores // N intra-op threads, at least 1."""
    for jobs in (1, 2, 64):
        done = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                              env={**os.environ, **pool.thread_env(jobs)}, capture_output=True, text=True, check=True)
        assert int(done.stdout) == pool._threads_per_job(jobs) == max(1, pool._cores() // jobs)


def test_jobs_run_train_subprocesses_with_a_share_of_the_cores(tiny, tmp_path, monkeypatch):
    """--jobs N: N ``esapr train`` processes at once, each with cores // N threads, its output in a
    log of this process's own, each stopping when the compare dies (Linux: a parent-death signal)."""
    base, options = tiny
    runs = plan_runs(["train_vae_net"], [0, 1, 2], {**options, "experiment_root": str(tmp_path)})
    started, running = [], []

    class FakeProcess:
        def __init__(self, argv, stdout, env, preexec_fn, start_new_session, **kwargs):
            started.append((argv, env["OMP_NUM_THREADS"], preexec_fn, start_new_session))
            running.append(self)
            self.returncode = None
            stdout.write("esapr: error: simulated\n")

        def poll(self):
            assert len(running) <= 2            # never more than --jobs at once
            running.remove(self)
            self.returncode = 2
            return 2

    monkeypatch.setattr(pool.subprocess, "Popen", FakeProcess)
    monkeypatch.setattr(pool, "_cores", lambda: 8)
    said = []
    outcomes = pool.run_all(runs, [plan_run(r.config) for r in runs], jobs=2, say=said.append)
    assert [threads for _, threads, _, _ in started] == ["4", "4", "4"]
    assert said[0] == ("2 runs at a time, each with 4 thread(s) of the 8 core(s) (OMP_NUM_THREADS, MKL_NUM_THREADS, "
                       "OPENBLAS_NUM_THREADS)")
    assert started[0][0][1:4] == ["-m", "esapr", "train"] and "--experiment_name" in started[0][0]
    assert all(callable(preexec) and alone for _, _, preexec, alone in started)
    assert [(o.state, o.note) for o in outcomes] == [("failed", "exit 2: esapr: error: simulated")] * 3
    logs = tmp_path / "ratings" / "compare_logs"
    assert sorted(p.name for p in logs.iterdir()) == [f"vae_net_seed{i}.{os.getpid()}.log" for i in range(3)]
