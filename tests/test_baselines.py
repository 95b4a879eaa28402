"""BERT4Rec, SASRec, TiSASRec, MEANTIME and MARank: the fast parts equal straightforward
re-statements of docs/original.md §4 (materialised [B, T, T, H] tensors), causality, edge cases,
learning on synthetic data, and every template through the CLI."""
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import esapr.models.length_groups as grouping
import esapr.models.relative as rel_terms
from esapr.config import build_config
from esapr.data.batches.types import SequenceBatch
from esapr.errors import UserError
from esapr.experiment import Experiment
from esapr.models import DataInfo, build_model
from esapr.models.attention import attention_bias
from esapr.models.dropout import dropout
from esapr.models.meantime import MixedAttention, RelativeKernels
from esapr.models.tisasrec import TimeIntervalAttention, TimeIntervals
from esapr.training.trainer import train
from tests.conftest import tiny
from tests.synthetic import write_ratings_csv

INFO = DataInfo(n_users=12, n_items=30, n_days=80)
TEMPLATES = ["train_bert", "train_sas", "train_tisas", "train_meantime", "train_marank"]


def tiny_config(template, **overrides):
    """The family's tiny model (max_len 10: ``random_batch``'s windows), without dropout unless asked."""
    return build_config([template], tiny(template, **{"dropout": 0.0, **overrides}))


def random_batch(b=5, t=10, n_items=30, seed=0, min_len=1):
    """Left-padded windows of random lengths with increasing timestamps and days."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, t + 1, (b,), generator=g)
    lengths[0] = t
    slots = torch.arange(t)
    real = slots.unsqueeze(0) >= (t - lengths).unsqueeze(1)
    tokens = torch.where(real, torch.randint(1, n_items + 1, (b, t), generator=g), 0)
    steps = torch.randint(0, 5 * 86400, (b, t), generator=g)
    times = torch.where(real, 1_000_000_000 + steps.cumsum(1), 0)
    days = torch.where(real, (times - 1_000_000_000) // 86400 + 1, 0)
    labels = torch.where(real & (torch.rand(b, t, generator=g) < 0.4), tokens, 0)
    labels[:, -1] = tokens[:, -1]
    negatives = torch.where(labels > 0, torch.randint(1, n_items + 1, (b, t), generator=g), 0)
    candidates = torch.randint(1, n_items + 1, (b, 7), generator=g)
    return SequenceBatch(tokens=tokens, labels=labels, negatives=negatives, timestamps=times, days=days,
                         candidates=candidates, users=torch.arange(b))


# --- TiSASRec attention against the original's materialised formula ----------------------------------

def naive_tisas_attention(att: TimeIntervalAttention, query, x, causal_mask, pos_k, pos_v, times, key_table,
                          value_table, clip):
    b, t, h = x.shape
    n, d = att.heads, h // att.heads
    split = lambda y: y.view(b, -1, n, d).transpose(1, 2)
    q, k, v = split(att.query(query)), split(att.key(x)), split(att.value(x))
    pk, pv = split(pos_k), split(pos_v)
    intervals = (times[:, :, None] - times[:, None, :]).abs().clamp(max=clip)
    rk = key_table[intervals].view(b, t, t, n, d).permute(0, 3, 1, 2, 4)
    rv = value_table[intervals].view(b, t, t, n, d).permute(0, 3, 1, 2, 4)
    scores = (q @ k.transpose(-1, -2) + q @ pk.transpose(-1, -2) + torch.einsum("bnid,bnijd->bnij", q, rk)) / math.sqrt(d)
    scores = scores.masked_fill(~causal_mask, -1e9)
    p = scores.softmax(-1)
    out = p @ v + p @ pv + torch.einsum("bnij,bnijd->bnid", p, rv)
    return out.transpose(1, 2).reshape(b, t, h)


@pytest.mark.parametrize("chunk", [1 << 22, 200])   # one chunk, or one example per chunk
def test_tisas_attention_equals_materialised_formula(monkeypatch, chunk):
    monkeypatch.setattr(rel_terms, "CHUNK_ELEMENTS", chunk)
    torch.manual_seed(0)
    batch = random_batch()
    h, clip = 16, 7
    att = TimeIntervalAttention(h, 2, dropout=0.0).double()
    key_table, value_table = torch.nn.Embedding(clip + 1, h).double(), torch.nn.Embedding(clip + 1, h).double()
    x = torch.randn(5, 10, h, dtype=torch.float64)
    pos_k, pos_v = torch.randn(10, h, dtype=torch.float64), torch.randn(10, h, dtype=torch.float64)
    times = batch.timestamps // 86400
    tokens = batch.tokens
    bias = attention_bias(tokens, causal=True).double()
    rel = TimeIntervals(times, key_table, value_table, clip, 0.0, training=True)
    ours = att(x, x, bias, pos_k.expand(5, -1, -1), pos_v.expand(5, -1, -1), rel)
    allowed = (tokens > 0)[:, None, None, :] & torch.ones(10, 10, dtype=torch.bool).tril()
    ref = naive_tisas_attention(att, x, x, allowed, pos_k.expand(5, -1, -1), pos_v.expand(5, -1, -1), times,
                                key_table.weight, value_table.weight, clip)
    real = tokens > 0                         # padded query rows are never read
    assert torch.allclose(ours[real], ref[real], atol=1e-10)
    params = [att.query.weight, att.key.weight, att.value.weight, key_table.weight, value_table.weight]
    g_ours = torch.autograd.grad((ours[real] ** 2).sum(), params)
    g_ref = torch.autograd.grad((ref[real] ** 2).sum(), params)
    for a, b in zip(g_ours, g_ref):
        assert torch.allclose(a, b, atol=1e-9)


# --- MEANTIME attention against the original's materialised formula ---------------------------------

def naive_kernel(kind, times, hidden, freq=10000.0):
    """§4.6 [B, T, T, H] float64: the sinusoid exactly, e and l in float32 as the original."""
    if kind == "s":
        dt = (times[:, :, None] - times[:, None, :]).double()
        w = 1.0 / torch.pow(freq, torch.arange(0, hidden, 2.0, dtype=torch.float64) / hidden)
        return torch.cat([torch.sin(dt[..., None] * w), torch.cos(dt[..., None] * w)], -1)
    dt = (times[:, :, None] - times[:, None, :]).float()
    w = 1.0 / torch.pow(freq, torch.arange(0, hidden, 1.0) / hidden)
    k = torch.exp(-(dt.abs()[..., None] * w)) if kind == "e" else torch.log1p(dt.abs()[..., None] * w)
    return k.double()


def naive_mixed_attention(att: MixedAttention, x, absolute, kernels, key_mask):
    """One head at a time; head g of kernel l is overall head l * per + g (absolute kernels first)."""
    b, t, h = x.shape
    L, d, per = att.heads, att.d_k, att.per_kernel
    split = lambda y: y.view(b, t, L, d).transpose(1, 2)
    q, k, v = split(att.query(x)), split(att.key(x)), split(att.value(x))
    heads = []
    for l in range(att.La):
        pq, pk = att.abs_query[l](absolute[l]), att.abs_key[l](absolute[l])
        for g in range(per):
            head, part = l * per + g, slice(g * d, (g + 1) * d)
            heads.append((q[:, head] + pq[..., part]) @ (k[:, head] + pk[..., part]).transpose(-1, -2))
    for r in range(att.Lr):
        R = att.rel_key[r](kernels[r])                                  # B T T per*d, as the original
        for g in range(per):
            head = (att.La + r) * per + g
            ql = q[:, head]
            heads.append(ql @ k[:, head].transpose(-1, -2)
                         + torch.einsum("bid,bijd->bij", ql + att.rel_bias[r * per + g], R[..., g * d:(g + 1) * d]))
    scores = torch.stack(heads, 1) / math.sqrt(d)
    p = scores.masked_fill(~key_mask, -1e9).softmax(-1)
    return att.output((p @ v).transpose(1, 2).reshape(b, t, h))


@pytest.mark.parametrize("abs_kinds,rel_kinds", [("p-d", "s-l"), ("c", "e"), ("", "s-e-l"), ("p-d-c", "")])
@pytest.mark.parametrize("chunk,per_kernel", [(1 << 22, 1), (300, 1), (300, 2)])
def test_meantime_attention_equals_materialised_formula(monkeypatch, abs_kinds, rel_kinds, chunk, per_kernel):
    monkeypatch.setattr(rel_terms, "CHUNK_ELEMENTS", chunk)
    torch.manual_seed(1)
    batch = random_batch()
    h = 24
    n_abs, rels = len([k for k in abs_kinds.split("-") if k]), [k for k in rel_kinds.split("-") if k]
    att = MixedAttention(h * per_kernel, n_abs, len(rels), dropout=0.0, heads_per_kernel=per_kernel).double()
    h = h * per_kernel
    torch.nn.init.normal_(att.rel_bias, 0, 0.5)
    for lin in att.rel_key:
        torch.nn.init.normal_(lin.bias, 0, 0.5)
    x = torch.randn(5, 10, h, dtype=torch.float64)
    absolute = [torch.randn(5, 10, h, dtype=torch.float64) for _ in range(n_abs)]
    times = batch.timestamps
    bias = attention_bias(batch.tokens).double()
    relative = RelativeKernels(rels, times, h, 10000.0, 1, 0.0, training=True) if rels else None
    ours = att(x, x, bias, absolute, relative)
    ref = naive_mixed_attention(att, x, absolute, [naive_kernel(k, times, h) for k in rels],
                                (batch.tokens > 0)[:, None, None, :])
    assert torch.allclose(ours, ref, atol=1e-6)
    params = [p for p in att.parameters()]
    g_ours = torch.autograd.grad((ours ** 2).sum(), params, allow_unused=True)
    g_ref = torch.autograd.grad((ref ** 2).sum(), params, allow_unused=True)
    for a, b in zip(g_ours, g_ref):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_meantime_kernels_follow_the_reference_formulas():
    times = torch.tensor([[0, 0, 100, 250, 1000], [978_300_000, 978_300_100, 990_000_000, 1_040_000_000, 1_046_000_000]])
    rel = RelativeKernels(["s", "e", "l"], times, 8, 10000.0, 1, 0.0, training=False)
    for i, kind in enumerate("sel"):
        got = rel.kernel(i, 0, 2, 5).double()
        if kind == "s":   # exact values (float32 rounding only), also for dt ~ 7e7 s
            assert torch.allclose(got, naive_kernel(kind, times, 8), atol=2e-6)
        else:
            assert torch.equal(got, naive_kernel(kind, times, 8))
    s = rel.kernel(0, 0, 1, 5)
    assert torch.allclose(s[0, 3, 2, :4], torch.sin(torch.tensor(150.0) / 10000 ** (torch.arange(0, 8, 2) / 8)))
    assert torch.allclose(s[0, 3, 2, 4:], torch.cos(torch.tensor(150.0) / 10000 ** (torch.arange(0, 8, 2) / 8)))
    assert torch.allclose(rel.kernel(2, 0, 1, 5)[0, 0, 4], torch.log1p(1000 / 10000 ** (torch.arange(8) / 8.0)))
    assert torch.allclose(rel.kernel(1, 0, 1, 5)[0, 4, 1], torch.exp(-1000 / 10000 ** (torch.arange(8) / 8.0)))
    # the last query rows only (evaluation)
    assert torch.equal(rel.kernel(0, 0, 2, 1), rel.kernel(0, 0, 2, 5)[:, -1:])


# --- the chunked relative terms: exact gradients with dropout on -----------------------------------

def test_relative_terms_gradcheck_with_dropout(monkeypatch):
    monkeypatch.setattr(rel_terms, "CHUNK_ELEMENTS", 64)        # several chunks
    torch.manual_seed(2)
    b, n, t, d, clip = 3, 2, 4, 3, 5
    times = torch.tensor([[0, 1, 3, 9], [0, 0, 2, 2], [5, 6, 7, 20]])
    drop = rel_terms.PairDropout(0.4, training=True, streams=2)
    q = torch.randn(b, n, t, d, dtype=torch.float64, requires_grad=True)
    probs = torch.rand(b, n, t, t, dtype=torch.float64, requires_grad=True)
    tables = [torch.randn(clip + 1, d, dtype=torch.float64, requires_grad=True) for _ in range(n)]
    key = lambda q, *tabs: rel_terms.IntervalTerm.apply(q, times, times, clip, drop, rel_terms.KEYS, *tabs)
    value = lambda p, *tabs: rel_terms.IntervalTerm.apply(p, times, times, clip, drop, rel_terms.VALUES, *tabs)
    assert torch.autograd.gradcheck(key, (q, *tables))
    assert torch.autograd.gradcheck(value, (probs, *tables))
    out = key(q, *tables)
    assert torch.equal(out, key(q, *tables))                  # the same masks every call
    full = rel_terms.IntervalTerm.apply(q, times, times, clip, rel_terms.PairDropout(0.0, True, 2), rel_terms.KEYS,
                                       *tables)
    assert not torch.allclose(out, full)                      # dropout did something

    kernels = RelativeKernels(["s", "l"], times, 6, 10000.0, 1, 0.4, training=True)
    u = torch.randn(b, 2, 2, t, 6, dtype=torch.float64, requires_grad=True)   # 2 kernels x 2 heads
    assert torch.autograd.gradcheck(lambda u: rel_terms.KernelTerm.apply(u, kernels, kernels.drop), (u,))


def test_cpu_dropout_rate_scale_and_gradient():
    torch.manual_seed(3)
    x = torch.ones(400_000, requires_grad=True)
    y = dropout(x, 0.2, training=True)
    zero = (y == 0).double().mean().item()
    assert abs(zero - 0.2) < 0.003
    assert abs(y.mean().item() - 1.0) < 0.01
    y.sum().backward()
    assert torch.equal(x.grad == 0, y == 0)
    assert dropout(x, 0.2, training=False) is x
    torch.manual_seed(3)
    again = dropout(torch.ones(400_000), 0.2, training=True)
    assert torch.equal(again, y.detach())                     # seeded by the global RNG


# --- whole models -------------------------------------------------------------------------------------

def model(template, **overrides):
    return build_model(tiny_config(template, **overrides), INFO)


@pytest.mark.parametrize("template", ["train_bert", "train_sas", "train_tisas", "train_meantime"])
def test_last_slot_and_length_groups_give_the_same_numbers(monkeypatch, template):
    m = model(template, dropout=0.2).eval()
    batch = random_batch(b=40, seed=4)
    split = grouping.length_groups
    with torch.no_grad():
        full = m.encode(batch)
        last = m.encode(batch, last_only=True)
        assert torch.allclose(full[:, -1], last, atol=1e-5)
        one = dict(candidates=m.candidate_scores(batch), loss=m(batch), scores=m.scores(batch))
        monkeypatch.setattr(grouping, "length_groups", lambda tokens, hidden: split(tokens, hidden, group_cost=0.0))
        assert len(grouping.length_groups(batch.tokens, 16)) > 2            # the lengths really differ
        assert torch.allclose(one["candidates"], m.candidate_scores(batch), atol=1e-5)
        assert torch.allclose(one["loss"], m(batch), atol=1e-5)
        assert torch.allclose(one["scores"], m.scores(batch), atol=1e-5)
        assert torch.allclose(one["scores"].gather(1, batch.candidates), one["candidates"], atol=1e-5)


def test_length_groups_cover_every_row_once_with_their_length():
    tokens = torch.zeros(50, 20, dtype=torch.long)
    lengths = torch.tensor([1 + (i * 7) % 20 for i in range(50)])
    for row, n in enumerate(lengths):
        tokens[row, 20 - n:] = 1
    groups = grouping.length_groups(tokens, 64, group_cost=0.0)
    rows = torch.cat([r for r, _ in groups])
    assert sorted(rows.tolist()) == list(range(50))
    for r, length in groups:
        assert int(lengths[r].max()) == length
    assert len(grouping.length_groups(tokens, 64, group_cost=1e30)) == 1


@pytest.mark.parametrize("template", ["train_sas", "train_tisas"])
def test_sas_models_are_causal(template):
    m = model(template, dropout=0.0, num_blocks=2).eval()       # a later block must not leak either
    batch = random_batch(b=4, seed=5)
    changed = replace(batch, tokens=batch.tokens.clone(), timestamps=batch.timestamps.clone())
    changed.tokens[:, 6:] = torch.randint(1, 31, (4, 4))
    changed.timestamps[:, 6:] += 12345
    with torch.no_grad():
        a, b = m.encode(batch), m.encode(changed)
    real = batch.tokens[:, :6] > 0                 # padded query rows are never read
    assert real.sum() > 10
    assert torch.allclose(a[:, :6][real], b[:, :6][real], atol=1e-6)
    assert not torch.allclose(a[:, 6:], b[:, 6:], atol=1e-3)


def test_bert_attends_both_ways():
    m = model("train_bert").eval()
    batch = random_batch(b=4, seed=5)
    changed = replace(batch, tokens=batch.tokens.clone())
    changed.tokens[:, -1] = 31                                   # the mask token at the end
    with torch.no_grad():
        assert not torch.allclose(m.encode(batch)[:, 0], m.encode(changed)[:, 0], atol=1e-4)


@pytest.mark.parametrize("template", ["train_bert", "train_meantime", "train_sas", "train_tisas"])
def test_no_labelled_position_gives_zero_loss_with_a_gradient(template):
    m = model(template, dropout=0.2).train()
    batch = random_batch(b=3, seed=6)
    batch.labels.zero_()
    batch.negatives.zero_()
    loss = m(batch)
    assert loss.item() == 0.0
    loss.backward()
    assert all(p.grad is None or torch.all(p.grad == 0) for p in m.parameters())


def test_loss_is_the_mean_over_masked_positions():
    """CE over classes 0..n_items at the label positions, one mean over the whole batch."""
    m = model("train_bert").eval()
    batch = random_batch(b=6, seed=7)
    with torch.no_grad():
        h = m.encode(batch)
        logits = m.head(h[batch.labels > 0])
        assert logits.shape[1] == INFO.n_items + 1
        expected = F.cross_entropy(logits, batch.labels[batch.labels > 0])
        assert torch.allclose(m(batch), expected, atol=1e-5)


def test_sas_loss_matches_formula():
    m = model("train_sas").eval()
    batch = random_batch(b=6, seed=8)
    with torch.no_grad():
        h = m.encode(batch)
        sel = batch.labels > 0
        e = m.token.weight
        pos = torch.sigmoid((h[sel] * e[batch.labels[sel]]).sum(-1))
        neg = torch.sigmoid((h[sel] * e[batch.negatives[sel]]).sum(-1))
        expected = (-torch.log(pos + 1e-24) - torch.log(1 - neg + 1e-24)).mean()
        assert torch.allclose(m(batch), expected, atol=1e-5)


def test_marank_batch_of_one_and_bpr():
    m = model("train_marank", dropout=0.2, marank_max_len=4)
    batch = SequenceBatch(tokens=torch.tensor([[3, 4, 5, 5]]), labels=torch.tensor([[6]]),
                          negatives=torch.tensor([[7]]), users=torch.tensor([2]), candidates=torch.tensor([[6, 7, 8]]))
    loss = m.train()(batch)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    m.eval()
    with torch.no_grad():
        c = m.candidate_scores(batch)
        assert c.shape == (1, 3)
        assert torch.allclose(c, m.scores(batch).gather(1, batch.candidates), atol=1e-6)
        assert torch.allclose(m(batch), -F.logsigmoid(c[0, 0] - c[0, 1]), atol=1e-6)


def test_init_follows_reference_and_model_init_seed():
    for template in TEMPLATES:
        a, b = model(template), model(template)
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert torch.equal(pa, pb)
        other = model(template, model_init_seed=1)
        assert not all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), other.parameters()))
        for name, module in a.named_modules():
            if isinstance(module, torch.nn.LayerNorm):
                assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
            elif isinstance(module, torch.nn.Linear):
                assert module.bias is None or torch.all(module.bias == 0)
        big = [p for n, p in a.named_parameters() if n.endswith("weight") and p.numel() >= 400 and p.ndim == 2]
        stds = torch.tensor([p.std().item() for p in big])
        assert torch.all((stds > 0.015) & (stds < 0.025)), (template, stds)


def test_meantime_num_heads_is_heads_per_kernel():
    """The original ignored num_heads (one head per kernel); here it counts heads per kernel."""
    one = model("train_meantime", num_heads=1, hidden_units=16)   # the template value: the original
    two = model("train_meantime", num_heads=2, hidden_units=16)
    assert one.blocks[0].attention.heads == 4 and two.blocks[0].attention.heads == 8
    assert two.blocks[0].attention.d_k == 2
    assert [p.numel() for p in one.parameters()] == [p.numel() for p in two.parameters()]  # same size, split finer
    small = model("train_meantime", num_heads=1, absolute_kernel_types="c", relative_kernel_types="e")
    assert small.blocks[0].attention.heads == 2
    with pytest.raises(UserError, match="absolute_kernel_types"):
        model("train_meantime", absolute_kernel_types="p-x")
    with pytest.raises(UserError, match="must divide hidden_units"):
        model("train_meantime", hidden_units=18, absolute_kernel_types="p-d-c", relative_kernel_types="s-e")


# --- learning on synthetic data -----------------------------------------------------------------------

LEARN = dict(max_len=20, val_batch_size=128, test_batch_size=128, saturation_wait_epochs=100, dropout=0.1,
             full_ranking=False)
# few optimizer steps per epoch, so that epoch 1 is still far from what training reaches
PER_MODEL = {
    "train_bert": dict(train_window=1, train_batch_size=64, lr=0.01, num_epochs=7, hidden_units=32),
    "train_sas": dict(train_window=0, train_batch_size=120, lr=0.002, num_epochs=10),
    "train_tisas": dict(train_window=0, train_batch_size=120, lr=0.002, num_epochs=10),
    "train_meantime": dict(train_window=0, train_batch_size=40, lr=0.005, num_epochs=10, hidden_units=32),
    "train_marank": dict(train_window=0, train_batch_size=40, lr=0.005, num_epochs=8),
}


@pytest.mark.slow
@pytest.mark.parametrize("template", TEMPLATES)
def test_every_model_learns_a_synthetic_sequence(tmp_path, template):
    """Users walk an item cycle (tests/synthetic.py): validation NDCG@10 must rise clearly."""
    data_file = write_ratings_csv(tmp_path / "ratings.csv")
    options = tiny(template, data_file, **LEARN, **PER_MODEL[template], experiment_root=str(tmp_path / "runs"))
    results = train(build_config([template], options), progress=False)
    val = Experiment(Path(results["experiment"])).read_table("val_log")
    first, best = float(val[0]["NDCG@10"]), max(float(r["NDCG@10"]) for r in val)
    assert best > first + 0.15, (first, best)
    assert results["test"]["NDCG@10"] > 0.3, results["test"]    # 21 candidates: chance is about 0.2


@pytest.mark.slow
@pytest.mark.parametrize("template", TEMPLATES)
def test_template_runs_through_the_cli(tmp_path, template):
    data_file = write_ratings_csv(tmp_path / "ratings.csv", n_users=60)
    args = ["--templates", template, "--data_file", str(data_file), "--num_epochs", "2", "--max_len", "20",
            "--hidden_units", "16", "--train_batch_size", "32", "--local_data_folder", str(tmp_path / "tmp"),
            "--experiment_root", str(tmp_path / "tmp"), "--device", "cpu"]
    done = subprocess.run([sys.executable, "-m", "esapr", "train", *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    folder = tmp_path / "tmp" / "ratings" / template.removeprefix("train_")
    for name in ("tables/val_log.csv", "tables/test_log.csv", "results.json"):
        assert (folder / name).is_file(), name
    results = json.loads((folder / "results.json").read_text())
    assert results["epochs"] == 2 and results["model_code"] == template.removeprefix("train_")
    assert 0.0 <= results["test"]["NDCG@10"] <= 1.0
    # the saved best model, evaluated again, gives the same test metrics
    again = subprocess.run([sys.executable, "-m", "esapr", "evaluate", "--experiment", str(folder), "--json",
                            "--device", "cpu"], capture_output=True, text=True, timeout=600,
                           cwd=Path(__file__).resolve().parents[1])
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout) == pytest.approx(results["test"])
