"""EASE, SLIST and SASRec's cross-entropy losses: the closed forms against dense numpy solves,
the history rows on a hand-made CSR, the grid searched as a grid (every setting fitted and
validated, the best one tested; resumed exactly), the losses against per-position loops, and
the templates through the CLI (train, evaluate)."""
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import esapr.data.batches.history as history
import esapr.models.sasrec as sasrec
from esapr.config import build_config
from esapr.data.batches.history import HistoryBatches, RecentHistoryBatches
from esapr.data.batches.types import SequenceBatch
from esapr.data.prepare import PreparedData, prepare_data
from esapr.data.sequences import Sequences
from esapr.errors import Interrupted, UserError
from esapr.experiment import Experiment
from esapr.models import DataInfo, build_model
from esapr.models.ease import EASE
from esapr.models.sasrec import next_item_ce_loss
from esapr.models.slist import SLIST
from esapr.training.trainer import Trainer, train
from tests.conftest import tiny

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def sparse_rows(dense: np.ndarray) -> torch.Tensor:
    return torch.tensor(dense, dtype=torch.float32).to_sparse().coalesce()


# --- EASE -------------------------------------------------------------------------------------------

def test_ease_weights_equal_a_dense_numpy_solve():
    x = np.array([[1, 1, 0, 0, 1],
                  [0, 1, 1, 0, 0],
                  [1, 0, 1, 1, 0],
                  [1, 1, 1, 0, 0],
                  [0, 0, 0, 1, 1],
                  [1, 0, 0, 1, 0]], dtype=np.float64)
    lam = 2.0
    p = np.linalg.inv(x.T @ x + lam * np.eye(5))
    expected = np.eye(5) - p / np.diag(p)[None, :]
    np.fill_diagonal(expected, 0.0)
    model = EASE(build_config(["train_ease"]).model, DataInfo(n_users=6, n_items=5, n_days=1))
    padded = np.hstack([np.zeros((6, 1)), x])           # column 0: the padding item
    model.fit_closed_form({"ease_lambda": lam}, SimpleNamespace(user_rows=lambda: sparse_rows(padded)))
    weights = model.weights.double().numpy()
    np.testing.assert_allclose(weights[1:, 1:], expected, atol=1e-6)
    assert not weights[0].any() and not weights[:, 0].any()
    assert abs(expected).max() > 0.1                    # not a trivially small solution


# --- the history rows on a hand-made CSR --------------------------------------------------------------

def hand_made_data(tmp_path) -> PreparedData:
    """Three users over five items; the training part ends before each user's last two items.
    u0: 2 1 3 1 | 4 5   u1: 2 3 | 4 5   u2: 5 | 4 2"""
    items = np.array([2, 1, 3, 1, 4, 5, 2, 3, 4, 5, 5, 4, 2], dtype=np.int32)
    sequences = Sequences(offsets=np.array([0, 6, 10, 13]), items=items, timestamps=np.arange(13, dtype=np.int64),
                          user_ids=np.array([10, 11, 12]), item_ids=np.arange(1, 6))
    negatives = np.array([[5, 4], [1, 1], [1, 3]])
    return PreparedData(sequences, negatives, None, tmp_path, "hand")


def hand_config(template, **overrides):
    options = {"test_negative_sample_size": 2, **({"max_len": 4} if template == "train_slist" else {}), **overrides}
    return build_config([template], options)


def history_builder(cls, data, config):
    return cls(data, config.model, config.evaluation, CPU)


def test_history_rows_are_binary_or_recency_weighted_training_parts(tmp_path):
    data = hand_made_data(tmp_path)
    binary = history_builder(HistoryBatches, data, hand_config("train_ease"))
    assert binary.user_rows().to_dense().tolist() == [[0, 1, 1, 1, 0, 0],       # 1 seen twice: still 1
                                                      [0, 0, 1, 1, 0, 0],
                                                      [0, 0, 0, 0, 0, 1]]
    # max_len 4, exp_stair with c = 2: the last three items weigh 0.5, 0.5, 1 (oldest first)
    recent = history_builder(RecentHistoryBatches, data, hand_config("train_slist"))
    assert recent.user_rows().to_dense().tolist() == [[0, 1.5, 0, 0.5, 0, 0],   # 1 at distances 1 and 3
                                                      [0, 0, 0.5, 1, 0, 0],
                                                      [0, 0, 0, 0, 0, 1]]
    rows, targets = zip(*recent.transition_rows())
    assert torch.cat(targets).tolist() == [1, 3, 1, 3]                          # u0's 2nd-4th items, u1's 2nd
    assert torch.cat([r.to_dense() for r in rows]).tolist() == [[0, 0, 1, 0, 0, 0],
                                                                [0, 1, 0.5, 0, 0, 0],
                                                                [0, 0.5, 0.5, 1, 0, 0],
                                                                [0, 0, 1, 0, 0, 0]]
    test = next(binary.eval_batches("test"))          # the history before the test answer: val item included
    assert test.answers.tolist() == [5, 5, 2]
    assert test.history.is_sparse                     # scored by a sparse product on a CPU
    assert test.history.to_dense().tolist() == [[0, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 1, 1]]
    val = next(recent.eval_batches("val"))
    assert torch.equal(val.history.to_dense(), recent.user_rows().to_dense())


# --- SLIST --------------------------------------------------------------------------------------------

def column_by_column(xx, ss, st, alpha, lam) -> np.ndarray:
    """The zero-diagonal solution one column at a time: column j is the ridge regression of the
    j-th target column on every other item (item j left out of the inputs)."""
    g, r = alpha * xx + (1 - alpha) * ss, alpha * xx + (1 - alpha) * st
    n = len(g)
    w = np.zeros((n, n))
    for j in range(n):
        others = [i for i in range(n) if i != j]
        w[others, j] = np.linalg.solve(g[np.ix_(others, others)] + lam * np.eye(n - 1), r[others, j])
    return w


def test_slist_weights_equal_the_column_by_column_solve(tmp_path):
    x = np.array([[0, 1.5, 0, 0.5, 0, 0], [0, 0, 0.5, 1, 0, 0], [0, 0, 0, 0, 0, 1]])
    s = np.array([[0, 0, 1, 0, 0, 0], [0, 1, 0.5, 0, 0, 0], [0, 0.5, 0.5, 1, 0, 0], [0, 0, 1, 0, 0, 0]])
    t = np.eye(6)[[1, 3, 1, 3]]
    config = hand_config("train_slist")
    model = build_model(config, DataInfo(n_users=3, n_items=5, n_days=1))
    builder = history_builder(RecentHistoryBatches, hand_made_data(tmp_path), config)
    model.fit_closed_form({"slist_lambda": 0.7, "slist_alpha": 0.3}, builder)
    for got, want in zip(model.grams, (x.T @ x, s.T @ s, s.T @ t)):
        np.testing.assert_allclose(got.numpy(), want, atol=1e-12)
    expected = column_by_column(x.T @ x, s.T @ s, s.T @ t, 0.3, 0.7)
    np.testing.assert_allclose(model.weights.double().numpy(), expected, atol=1e-6)
    assert abs(expected).max() > 0.1


def test_slist_with_alpha_one_is_ease_on_its_rows():
    rng = np.random.default_rng(0)
    x = np.hstack([np.zeros((8, 1)), rng.random((8, 6)) * (rng.random((8, 6)) < 0.5)])
    config = build_config(["train_slist"])
    info = DataInfo(n_users=8, n_items=6, n_days=1)
    batches = SimpleNamespace(user_rows=lambda: sparse_rows(x),
                              transition_rows=lambda: iter([(sparse_rows(x[:3]), torch.tensor([1, 2, 3]))]))
    slist, ease = build_model(config, info), EASE(build_config(["train_ease"]).model, info)
    slist.fit_closed_form({"slist_lambda": 0.5, "slist_alpha": 1.0}, batches)
    ease.fit_closed_form({"ease_lambda": 0.5}, batches)
    torch.testing.assert_close(slist.weights, ease.weights, atol=1e-6, rtol=0)


# --- the grid, searched as a grid ---------------------------------------------------------------------

def grid_config(template, data_file, root, **overrides):
    return build_config([template], tiny(template, data_file, experiment_root=str(root), **overrides))


@pytest.mark.parametrize("template", ["train_ease", "train_slist"])
def test_sparse_scoring_gives_the_dense_scores_and_the_same_ranks(tmp_path, data_file, monkeypatch, template):
    """On a CPU the history rows stay sparse and are scored by torch.sparse.mm (the start-up line
    says so); forced dense, as on a GPU, the scores agree to float rounding and every user's rank
    on both protocols is the same."""
    config = grid_config(template, data_file, tmp_path)
    trainer = Trainer(config, prepare_data(config), progress="quiet")
    trainer.model.fit_closed_form(trainer.setting(1), trainer.batches)
    assert "| cpu, fp32, sparse item-item scoring |" in trainer.summary(Experiment(tmp_path / "run"))
    batch = next(iter(trainer.batches.eval_batches("test")))
    sparse_scores, sparse = trainer.model.scores(batch), trainer.evaluate("test")
    monkeypatch.setattr(history, "sparse_scoring", lambda device: False)
    assert trainer.model.compute_note() == "dense item-item scoring"
    dense_batch = next(iter(trainer.batches.eval_batches("test")))
    assert batch.history.is_sparse and not dense_batch.history.is_sparse
    torch.testing.assert_close(sparse_scores, trainer.model.scores(dense_batch), atol=1e-5, rtol=0)
    dense = trainer.evaluate("test")
    assert (sparse.ranks == dense.ranks).all() and (sparse.full_ranks == dense.full_ranks).all()
    assert sparse.metrics == dense.metrics and sparse.full_ranks.min() >= 0


def test_the_setting_best_on_validation_is_kept_and_tested(tmp_path, data_file, monkeypatch):
    """Only lambda = 100 fits; the others leave all-zero weights, whose constant scores rank every
    answer last. The run must pick 100 (the middle of the grid), log every setting and test
    lambda 100's weights, not the last ones fitted."""
    fit = EASE.fit_closed_form

    def only_100(self, setting, batches):
        fit(self, setting, batches)
        if setting["ease_lambda"] != 100.0:
            self.weights.zero_()
    monkeypatch.setattr(EASE, "fit_closed_form", only_100)
    results = train(grid_config("train_ease", data_file, tmp_path, ease_lambdas=[10.0, 100.0, 1000.0]),
                    progress="quiet")
    assert results["best_setting"] == {"ease_lambda": 100.0} and results["best_epoch"] == 2
    assert results["epochs"] == 3
    rows = Experiment(Path(results["experiment"])).read_table("val_log")
    assert [float(r["ease_lambda"]) for r in rows] == [10.0, 100.0, 1000.0]
    assert [float(r["NDCG@10"]) for r in rows][1] == results["best_val"] > 0
    assert float(rows[0]["Recall@20"]) == 0.0         # constant scores: the answer ranks last of 21
    monkeypatch.setattr(EASE, "fit_closed_form", fit)
    alone = train(grid_config("train_ease", data_file, tmp_path, ease_lambdas=[100.0], experiment_name="alone"),
                  progress="quiet")
    assert results["test"] == alone["test"]


@pytest.mark.parametrize("pilot", [False, True], ids=["full", "pilot"])
def test_every_setting_of_the_grid_is_fitted_and_validated_whatever_pilot_says(tmp_path, data_file, monkeypatch,
                                                                              pilot):
    """SLIST's 2 x 2 grid: four fits, four validation rows with each setting's values, in grid
    order (lambda, then alpha); --pilot shortens validation and test to one batch, never the grid."""
    fitted, fit = [], SLIST.fit_closed_form

    def counting(self, setting, batches):
        fitted.append(dict(setting))
        fit(self, setting, batches)
    monkeypatch.setattr(SLIST, "fit_closed_form", counting)
    config = grid_config("train_slist", data_file, tmp_path, pilot=pilot, val_batch_size=8,
                         slist_lambdas=[10.0, 100.0], slist_alphas=[0.5, 1.0])
    results = train(config, progress="quiet")
    grid = [{"slist_lambda": lam, "slist_alpha": alpha} for lam in (10.0, 100.0) for alpha in (0.5, 1.0)]
    assert fitted == grid and results["epochs"] == 4
    rows = Experiment(Path(results["experiment"])).read_table("val_log")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert [{name: float(r[name]) for name in ("slist_lambda", "slist_alpha")} for r in rows] == grid
    assert results["best_setting"] == grid[results["best_epoch"] - 1]
    assert results["best_val"] == max(float(r["NDCG@10"]) for r in rows)


@pytest.mark.parametrize("template", ["train_ease", "train_slist"])
def test_a_grid_interrupted_between_settings_resumes_to_the_same_end(tmp_path, data_file, monkeypatch, template):
    """Killed while fitting its third setting (a checkpoint after every setting), the run resumed
    fits the rest of the grid only and ends as the run that was never stopped."""
    extra = ({"ease_lambdas": [10.0, 100.0, 1000.0]} if template == "train_ease" else
             {"slist_lambdas": [10.0, 100.0], "slist_alphas": [0.5, 1.0]})
    straight = train(grid_config(template, data_file, tmp_path, experiment_name="straight", **extra), progress="quiet")
    config = grid_config(template, data_file, tmp_path, experiment_name="stopped", **extra)
    model_class = EASE if template == "train_ease" else SLIST
    fit, fitted = model_class.fit_closed_form, []

    def stopped_at_the_third(self, setting, batches):
        fitted.append(setting)
        if len(fitted) == 3:
            raise KeyboardInterrupt
        fit(self, setting, batches)
    monkeypatch.setattr(model_class, "fit_closed_form", stopped_at_the_third)
    with pytest.raises(Interrupted, match="continue with --resume"):
        train(config, progress="quiet")
    config = config.with_run(resume=True)
    resumed = train(config, progress="quiet")
    assert len(fitted) == 3 + (resumed["epochs"] - 2)                   # settings 3.. fitted again, 1-2 not
    assert {k: resumed[k] for k in ("test", "best_setting", "best_epoch", "epochs", "best_val")} == \
        {k: straight[k] for k in ("test", "best_setting", "best_epoch", "epochs", "best_val")}
    assert [int(r["epoch"]) for r in Experiment(Path(resumed["experiment"])).read_table("val_log")] == \
        list(range(1, resumed["epochs"] + 1))
    with pytest.raises(UserError, match="fitted its whole grid; there is nothing to continue"):
        train(config, progress="quiet")


# --- options ------------------------------------------------------------------------------------------

def test_loss_and_grid_options_are_checked():
    assert build_config(["train_sas_ce"]).model.train_negative_sample_size == 0      # ce needs no negative pool
    build_config(["train_tisas"], dict(loss="sampled_ce", train_negative_sample_size=0))
    with pytest.raises(UserError, match="option 'train_negative_sample_size'"):
        build_config(["train_sas"], dict(train_negative_sample_size=0))
    with pytest.raises(UserError, match="option 'loss' is not read by model 'bert'"):   # it has its own loss
        build_config(["train_bert"], dict(loss="ce"))
    with pytest.raises(UserError, match="option 'loss' must be one of bce, ce, sampled_ce"):
        build_config(["train_sas"], dict(loss="softmax"))
    with pytest.raises(UserError, match="option 'ease_lambdas' is \\[\\]; give at least one value"):
        build_config(["train_ease"], dict(ease_lambdas=[]))
    with pytest.raises(UserError, match="option 'slist_alphas'"):
        build_config(["train_slist"], dict(slist_alphas=[1.5]))


@pytest.mark.parametrize("option,value", [("num_epochs", 2), ("saturation_wait_epochs", 100), ("lr", 0.01)])
@pytest.mark.parametrize("template", ["train_ease", "train_slist"])
def test_epochs_patience_and_steps_are_refused_for_a_closed_form_grid(template, option, value):
    code = template.removeprefix("train_")
    with pytest.raises(UserError, match=f"option '{option}' is not read by model '{code}'"):
        build_config([template], {option: value})
    config = build_config([template])
    assert config.training is None and config.num_epochs == -1 and config.seed == 0
    assert option not in config.values()


# --- SASRec's cross-entropy losses ----------------------------------------------------------------------

def slow_ce(hidden, labels, table, sampled=None) -> tuple[float, int]:
    """Per position, in Python: -log softmax of the label's logit among every item 1..n (sampled
    None) or among the label and the sampled items other than the label."""
    total, count = 0.0, 0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            label = int(labels[b, t])
            if label == 0:
                continue
            h = hidden[b, t].double()
            classes = (range(1, len(table)) if sampled is None else
                       [label] + [int(s) for s in sampled if int(s) != label])
            logits = torch.stack([h @ table[c].double() for c in classes])
            total -= float(logits[list(classes).index(label)] - torch.logsumexp(logits, 0))
            count += 1
    return total, count


def ce_case():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 4, 5, generator=g)
    labels = torch.tensor([[0, 2, 5, 1], [0, 0, 0, 4], [3, 3, 0, 6]])
    return hidden, labels, torch.randn(7, 5, generator=g)        # rows 0 (padding) .. 6


@pytest.mark.parametrize("sampled", [None, torch.tensor([3, 6, 6, 1, 2])], ids=["ce", "sampled_ce"])
@pytest.mark.parametrize("gathered", [True, False], ids=["gathered", "masked"])
def test_ce_losses_equal_a_per_position_loop(monkeypatch, sampled, gathered):
    """Gathered labelled rows (a CPU) and every row masked (a GPU) give the same numbers."""
    if not gathered:
        monkeypatch.setattr(sasrec, "labelled_rows", lambda labels, width: None)
    hidden, labels, table = ce_case()
    total, count = next_item_ce_loss(hidden, labels, table, sampled)
    expected_total, expected_count = slow_ce(hidden, labels, table, sampled)
    assert int(count) == expected_count == 7
    assert float(total) == pytest.approx(expected_total, rel=1e-6)


def test_sasrec_ce_and_sampled_ce_are_the_mean_over_labelled_positions():
    info = DataInfo(n_users=4, n_items=6, n_days=1)
    hidden, labels, _ = ce_case()
    tokens = torch.where(labels > 0, labels, 1)
    batch = SequenceBatch(users=torch.arange(3), tokens=tokens, labels=labels)
    for loss in ("ce", "sampled_ce"):
        model = build_model(build_config(["train_sas"], dict(loss=loss, num_negatives=4, hidden_units=8,
                                                             max_len=4, dropout=0.0)), info).eval()
        torch.manual_seed(5)
        sampled = torch.randint(1, 7, (4,)) if loss == "sampled_ce" else None
        with torch.no_grad():
            h = model.encode(batch)
            total, count = slow_ce(h, labels, model.token.weight[:7], sampled)
            torch.manual_seed(5)
            assert float(model(batch)) == pytest.approx(total / count, rel=1e-5)


# --- the templates through the CLI -------------------------------------------------------------------------

def cli(*args) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "esapr", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


@pytest.mark.slow
@pytest.mark.parametrize("template", ["train_ease", "train_slist"])
def test_template_trains_its_whole_grid_and_evaluates_through_the_cli(tmp_path, data_file, template):
    """The packaged template fits every setting of its grid (no epoch limit applies) and ``esapr
    evaluate`` reproduces the test metrics from the saved weights."""
    options = ["--data_file", str(data_file), "--local_data_folder", str(data_file.parent / "data"),
               "--experiment_root", str(tmp_path), "--device", "cpu", "--test_negative_sample_size", "20",
               *(["--max_len", "8"] if template == "train_slist" else [])]
    cli("train", "--templates", template, "--quiet", *options)
    folder = tmp_path / "ratings" / template.removeprefix("train_")
    results = json.loads((folder / "results.json").read_text())
    model = build_config([template]).model
    grid = (len(model.ease_lambdas) if template == "train_ease" else
            len(model.slist_lambdas) * len(model.slist_alphas))
    assert results["epochs"] == grid and results["model_code"] == template.removeprefix("train_")
    assert len(Experiment(folder).read_table("val_log")) == grid
    evaluated = cli("evaluate", "--experiment", str(folder), "--json", "--device", "cpu")
    assert json.loads(evaluated.stdout) == pytest.approx(results["test"], abs=1e-12)
