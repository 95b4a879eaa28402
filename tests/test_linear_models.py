"""EASE, SLIST and SASRec's cross-entropy losses: the closed forms against dense numpy solves,
the history rows on a hand-made CSR, the choice of the setting on validation, the losses against
per-position loops, and the templates through the CLI (train, evaluate, resume)."""
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import esapr.models.sasrec as sasrec
from esapr.config import build_config
from esapr.data.batches.history import HistoryBatches, RecentHistoryBatches
from esapr.data.batches.types import SequenceBatch
from esapr.data.prepare import PreparedData
from esapr.data.sequences import Sequences
from esapr.errors import UserError
from esapr.experiment import Experiment
from esapr.models import DataInfo, build_model
from esapr.models.ease import EASE
from esapr.models.sasrec import next_item_ce_loss
from esapr.training.trainer import train

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
    model = EASE(build_config(["train_ease"]), DataInfo(n_users=6, n_items=5, n_days=1))
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
    return build_config([template], dict(dict(max_len=4, test_negative_sample_size=2), **overrides))


def test_history_rows_are_binary_or_recency_weighted_training_parts(tmp_path):
    data = hand_made_data(tmp_path)
    binary = HistoryBatches(data, hand_config("train_ease"), CPU)
    assert binary.user_rows().to_dense().tolist() == [[0, 1, 1, 1, 0, 0],       # 1 seen twice: still 1
                                                      [0, 0, 1, 1, 0, 0],
                                                      [0, 0, 0, 0, 0, 1]]
    # max_len 4, exp_stair with c = 2: the last three items weigh 0.5, 0.5, 1 (oldest first)
    recent = RecentHistoryBatches(data, hand_config("train_slist"), CPU)
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
    assert test.history.tolist() == [[0, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 1, 1]]
    val = next(recent.eval_batches("val"))
    assert torch.equal(val.history, recent.user_rows().to_dense())


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
    builder = RecentHistoryBatches(hand_made_data(tmp_path), config, CPU)
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
    slist, ease = build_model(config, info), EASE(config, info)
    slist.fit_closed_form({"slist_lambda": 0.5, "slist_alpha": 1.0}, batches)
    ease.fit_closed_form({"ease_lambda": 0.5}, batches)
    torch.testing.assert_close(slist.weights, ease.weights, atol=1e-6, rtol=0)


# --- the setting chosen on validation -------------------------------------------------------------------

def tiny_options(data_file, root, **overrides):
    return dict(dict(data_file=str(data_file), local_data_folder=str(data_file.parent / "data"),
                     experiment_root=str(root), device="cpu", test_negative_sample_size=20, max_len=8), **overrides)


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
    options = tiny_options(data_file, tmp_path, ease_lambdas=[10.0, 100.0, 1000.0])
    results = train(build_config(["train_ease"], options), progress="quiet")
    assert results["best_setting"] == {"ease_lambda": 100.0} and results["best_epoch"] == 2
    assert results["epochs"] == 3
    rows = Experiment(Path(results["experiment"])).read_table("val_log")
    assert [float(r["ease_lambda"]) for r in rows] == [10.0, 100.0, 1000.0]
    assert [float(r["NDCG@10"]) for r in rows][1] == results["best_val"] > 0
    assert float(rows[0]["Recall@20"]) == 0.0         # constant scores: the answer ranks last of 21
    monkeypatch.setattr(EASE, "fit_closed_form", fit)
    alone = train(build_config(["train_ease"], dict(options, ease_lambdas=[100.0], experiment_name="alone")),
                  progress="quiet")
    assert results["test"] == alone["test"]


# --- options ------------------------------------------------------------------------------------------

def test_loss_and_grid_options_are_checked():
    assert build_config(["train_sas_ce"]).train_negative_sample_size == 0      # ce needs no negative pool
    build_config(["train_tisas"], dict(loss="sampled_ce", train_negative_sample_size=0))
    with pytest.raises(UserError, match="option 'train_negative_sample_size'"):
        build_config(["train_sas"], dict(train_negative_sample_size=0))
    with pytest.raises(UserError, match="option 'loss' is 'ce'; model 'bert' trains with its own loss"):
        build_config(["train_bert"], dict(loss="ce"))
    with pytest.raises(UserError, match="option 'loss' must be one of bce, ce, sampled_ce"):
        build_config(["train_sas"], dict(loss="softmax"))
    with pytest.raises(UserError, match="option 'ease_lambdas' is \\[\\]; give at least one value"):
        build_config(["train_ease"], dict(ease_lambdas=[]))
    with pytest.raises(UserError, match="option 'slist_alphas'"):
        build_config(["train_slist"], dict(slist_alphas=[1.5]))


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


@pytest.mark.parametrize("template", ["train_ease", "train_slist"])
def test_template_trains_evaluates_and_resumes_through_the_cli(tmp_path, data_file, template):
    options = ["--data_file", str(data_file), "--local_data_folder", str(data_file.parent / "data"),
               "--experiment_root", str(tmp_path), "--device", "cpu", "--test_negative_sample_size", "20",
               "--max_len", "8"]
    cli("train", "--templates", template, "--num_epochs", "2", "--quiet", *options)
    folder = tmp_path / "ratings" / template.removeprefix("train_")
    results = json.loads((folder / "results.json").read_text())
    assert results["epochs"] == 2 and results["model_code"] == template.removeprefix("train_")
    evaluated = cli("evaluate", "--experiment", str(folder), "--json", "--device", "cpu")
    assert json.loads(evaluated.stdout) == pytest.approx(results["test"], abs=1e-12)
    # resumed to three settings: as three settings straight
    cli("train", "--templates", template, "--resume", "--num_epochs", "3", "--quiet", *options)
    resumed = json.loads((folder / "results.json").read_text())
    config = build_config([template], dict(tiny_options(data_file, tmp_path, num_epochs=3, experiment_name="straight")))
    straight = train(config, progress="quiet")
    assert resumed["test"] == straight["test"] and resumed["best_setting"] == straight["best_setting"]
    assert resumed["epochs"] == 3 and len(Experiment(folder).read_table("val_log")) == 3
    # resumed with room for more settings than the grid has: the rest of the grid, then the end
    grid = (len(config.ease_lambdas) if template == "train_ease" else
            len(config.slist_lambdas) * len(config.slist_alphas))
    cli("train", "--templates", template, "--resume", "--num_epochs", str(grid + 5), "--quiet", *options)
    final = json.loads((folder / "results.json").read_text())
    assert final["epochs"] == grid and len(Experiment(folder).read_table("val_log")) == grid
