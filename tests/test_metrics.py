"""Ranking metrics: the one metric table (hand-computed values, the same through the device sums
and the numpy path of saved ranks, one entry per metric), the tie rule, masking, per-user
averaging, and the vectorised full ranking against a slow obviously-correct loop."""
import math

import numpy as np
import pytest
import torch

from esapr import metrics as metric_table
from esapr.data.ragged import history_pairs
from esapr.errors import UserError
from esapr.metrics import Metric, metric_names, per_user
from esapr.training.metrics import MetricSums, candidate_ranks, full_ranks


def torch_per_user(ranks: torch.Tensor, name: str) -> list[float]:
    return per_user(ranks.double(), name, torch).tolist()


def test_candidate_rank_and_metrics_hand_computed():
    # answer 0.7; negatives 0.9 and 0.8 score higher -> 0-based rank 2 (third place)
    scores = torch.tensor([[0.7, 0.9, 0.1, 0.8, 0.2, 0.3]])
    ranks = candidate_ranks(scores)
    assert ranks.tolist() == [2]
    assert torch_per_user(ranks, "NDCG@5") == pytest.approx([0.5])          # 1 / log2(4)
    assert torch_per_user(ranks, "NDCG@1") == [0.0] and torch_per_user(ranks, "Recall@1") == [0.0]
    assert torch_per_user(ranks, "Recall@5") == [1.0]
    assert torch_per_user(ranks, "MRR") == pytest.approx([1 / 3])
    assert metric_names([10, 1, 5], full_ranking=False) == [
        "NDCG@1", "NDCG@5", "NDCG@10", "Recall@1", "Recall@5", "Recall@10", "MRR"]


def test_metric_formulas_for_every_rank():
    ranks = np.arange(0, 30)
    for r in range(30):
        assert per_user(ranks, "NDCG@10")[r] == pytest.approx(1 / math.log2(r + 2) if r < 10 else 0.0)
        assert per_user(ranks, "Recall@10")[r] == (1.0 if r < 10 else 0.0)
        assert per_user(ranks, "MRR")[r] == pytest.approx(1 / (r + 1))


def test_per_user_table_hand_computed_same_on_device_and_from_saved_ranks():
    """Three users at ranks 0, 3, 12 (k = 5): NDCG@5 = 1, 1/log2(5), 0; Recall@5 = 1, 1, 0;
    MRR = 1, 1/4, 1/13. The trainer's device sums and the numpy path over saved ranks (compare,
    results) read the same table, so they agree to the last digit."""
    ranks = [0, 3, 12]
    expected = {"NDCG@5": [1.0, 1 / math.log2(5), 0.0], "Recall@5": [1.0, 1.0, 0.0], "MRR": [1.0, 0.25, 1 / 13]}
    sums = MetricSums([5])
    sums.add(torch.tensor(ranks))
    device = sums.result()
    assert list(device) == ["NDCG@5", "Recall@5", "MRR"]
    for name, values in expected.items():
        from_saved = per_user(np.array(ranks), name)
        assert from_saved.tolist() == pytest.approx(values, abs=1e-15)
        assert torch_per_user(torch.tensor(ranks), name) == from_saved.tolist()
        assert device[name] == pytest.approx(sum(values) / 3, abs=1e-15)
        assert device[name] == float(from_saved.mean())


def test_a_new_metric_is_one_entry_of_the_table(monkeypatch):
    """HR@k/2 (a metric the package does not have) added as one entry: it is named with every
    cut-off, averaged on the device, computed from saved ranks and parsed, in the table's order."""
    half = Metric("Half", lambda r, k, xp: (r < k / 2) * 1.0)
    monkeypatch.setitem(metric_table.METRICS, "Half", half)
    assert metric_names([4, 2], full_ranking=True) == [
        "NDCG@2", "NDCG@4", "Recall@2", "Recall@4", "MRR", "Half@2", "Half@4",
        "full_NDCG@2", "full_NDCG@4", "full_Recall@2", "full_Recall@4", "full_MRR", "full_Half@2", "full_Half@4"]
    sums = MetricSums([4])
    sums.add(torch.tensor([0, 1, 2, 5]))
    assert sums.result()["Half@4"] == 0.5                   # ranks 0 and 1 are below 4 / 2
    assert per_user(np.array([0, 1, 2, 5]), "full_Half@4").tolist() == [1.0, 1.0, 0.0, 0.0]
    assert metric_table.sort_key("Half@4") < metric_table.sort_key("full_NDCG@1")
    monkeypatch.delitem(metric_table.METRICS, "Half")
    with pytest.raises(UserError, match="unknown metric 'Half@4'"):
        per_user(np.array([0]), "Half@4")


def test_ties_count_against_the_answer_and_nan_does_not_crash():
    scores = torch.tensor([
        [1.0, 1.0, 1.0, 1.0],                 # constant model: worst rank, not best
        [0.5, 0.5, 0.1, 0.9],                 # one tie + one higher
        [float("nan"), 0.1, 0.2, 0.3],        # NaN answer: worst
        [0.5, float("nan"), 0.1, 0.2],        # NaN negative counts against
        [float("-inf"), float("-inf"), 0.0, float("-inf")],  # masked answer: last
    ])
    assert candidate_ranks(scores).tolist() == [3, 2, 3, 1, 3]


def slow_full_rank(scores: np.ndarray, answer: int, history: set) -> int:
    """Obviously correct: the competitors are items 1.. not in the history and not the answer."""
    a = scores[answer]
    rank = 0
    for item in range(1, len(scores)):
        if item == answer or item in history:
            continue
        if not (scores[item] < a):
            rank += 1
    return rank


def test_full_ranks_masking_when_answer_is_in_history():
    # V = 6 (items 1..5); answer 3 also occurs in the history {3, 4}
    scores = torch.tensor([[9.0, 0.1, 0.6, 0.5, 0.9, 0.5]])
    original = scores.clone()
    rows, items = torch.tensor([0, 0]), torch.tensor([3, 4])
    # competitors: 1 (0.1), 2 (0.6), 5 (0.5, a tie); padding (9.0) and item 4 (0.9) excluded
    assert full_ranks(scores, torch.tensor([3]), rows, items).tolist() == [2]
    assert torch.equal(scores, original)                      # not modified in place
    # without a mask, item 4 competes too
    assert full_ranks(scores, torch.tensor([3]), torch.zeros(0, dtype=torch.long),
                      torch.zeros(0, dtype=torch.long)).tolist() == [3]


def test_full_ranks_match_slow_loop_on_random_data():
    gen = torch.Generator().manual_seed(0)
    batch, vocab = 37, 50
    scores = torch.randint(0, 8, (batch, vocab), generator=gen).float()   # many ties
    scores[3, 5] = float("nan")
    answers = torch.randint(1, vocab, (batch,), generator=gen)
    histories = [set(torch.randint(1, vocab, (int(torch.randint(0, 15, (1,), generator=gen)),),
                                   generator=gen).tolist()) for _ in range(batch)]
    histories[0].add(int(answers[0]))                                  # answer inside the history
    rows = torch.tensor([r for r, h in enumerate(histories) for _ in h], dtype=torch.long)
    items = torch.tensor([i for h in histories for i in h], dtype=torch.long)
    got = full_ranks(scores, answers, rows, items).tolist()
    expected = [slow_full_rank(scores[r].numpy(), int(answers[r]), histories[r]) for r in range(batch)]
    assert got == expected


def test_history_pairs_on_hand_made_csr():
    # users: 0 -> [5, 6, 7, 8], 1 -> [1, 2], 2 -> [3, 3, 9]
    offsets = torch.tensor([0, 4, 6, 9])
    items = torch.tensor([5, 6, 7, 8, 1, 2, 3, 3, 9])
    users = torch.tensor([2, 0, 1])
    ends = torch.tensor([8, 3, 4])          # user 2 sees [3, 3]; user 0 sees [5, 6, 7]; user 1 none
    rows, pairs = history_pairs(offsets, items, users, ends)
    assert rows.tolist() == [0, 0, 1, 1, 1]
    assert pairs.tolist() == [3, 3, 5, 6, 7]
    empty_rows, empty_items = history_pairs(offsets, items, users[:0], ends[:0])
    assert empty_rows.numel() == 0 and empty_items.numel() == 0


def test_sums_average_per_user_over_uneven_batches():
    acc = MetricSums([10, 1])
    acc.add(torch.tensor([0, 0, 0]))         # 3 users at rank 0
    acc.add(torch.tensor([20]))              # 1 user outside the top 10
    acc.add(torch.tensor([1]), prefix="full_")
    result = acc.result()
    assert list(result) == ["NDCG@1", "NDCG@10", "Recall@1", "Recall@10", "MRR",
                            "full_NDCG@1", "full_NDCG@10", "full_Recall@1", "full_Recall@10", "full_MRR"]
    assert result["Recall@10"] == pytest.approx(0.75)              # per user, not (1 + 0) / 2
    assert result["NDCG@10"] == pytest.approx(0.75)
    assert result["MRR"] == pytest.approx((3 + 1 / 21) / 4)
    assert result["full_NDCG@10"] == pytest.approx(1 / math.log2(3))
    assert result["full_Recall@1"] == 0.0
    assert all(isinstance(v, float) for v in result.values())
