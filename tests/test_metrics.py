"""Ranking metrics: hand-computed values, the tie rule, masking, per-user averaging, and the
vectorised full ranking against a slow obviously-correct loop."""
import math

import numpy as np
import pytest
import torch

from esapr.training.metrics import MetricAccumulator, candidate_ranks, full_ranks, history_pairs, rank_metrics


def test_candidate_rank_and_metrics_hand_computed():
    # answer 0.7; negatives 0.9 and 0.8 score higher -> 0-based rank 2 (third place)
    scores = torch.tensor([[0.7, 0.9, 0.1, 0.8, 0.2, 0.3]])
    ranks = candidate_ranks(scores)
    assert ranks.tolist() == [2]
    m = rank_metrics(ranks, [1, 5, 10])
    assert m["NDCG@5"].item() == pytest.approx(0.5)            # 1 / log2(4)
    assert m["NDCG@1"].item() == 0.0 and m["Recall@1"].item() == 0.0
    assert m["Recall@5"].item() == 1.0
    assert m["MRR"].item() == pytest.approx(1 / 3)
    assert list(m) == ["NDCG@1", "NDCG@5", "NDCG@10", "Recall@1", "Recall@5", "Recall@10", "MRR"]


def test_rank_metric_formulas_for_every_rank():
    ranks = torch.arange(0, 30)
    m = rank_metrics(ranks, [10])
    for r in range(30):
        assert m["NDCG@10"][r].item() == pytest.approx(1 / math.log2(r + 2) if r < 10 else 0.0)
        assert m["Recall@10"][r].item() == (1.0 if r < 10 else 0.0)
        assert m["MRR"][r].item() == pytest.approx(1 / (r + 1))


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


def test_accumulator_averages_per_user_over_uneven_batches():
    acc = MetricAccumulator([10, 1])
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
