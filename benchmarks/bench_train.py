"""Time one training epoch and one validation pass per model family on synthetic data of a
real dataset's size, next to the original approach (per-example loaders in Python: dense VAE
vectors, BERT masking token by token, SAS negatives drawn one by one; metrics by argsort on the
CPU) measured in the same run with the same model. Prints one JSON object per line.

    python benchmarks/bench_train.py --family vae --size ml-1m --device cpu --baseline
    python benchmarks/bench_train.py --family bert --size ml-1m --device cuda --max_batches 50

``--max_batches`` times that many training (and validation) batches and extrapolates to the full
epoch (reported as ``extrapolated``), for sizes too large to run whole on a CPU.
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from esapr.config import build_config  # noqa: E402
from esapr.data.batches.types import BagBatch, SequenceBatch  # noqa: E402
from esapr.data.batches.vae import last_occurrence  # noqa: E402
from esapr.data.negatives import sample_negatives  # noqa: E402
from esapr.data.prepare import PreparedData  # noqa: E402
from esapr.data.sequences import build_sequences  # noqa: E402
from esapr.data.sources import RawInteractions  # noqa: E402
from esapr.training.trainer import Trainer, seed_everything  # noqa: E402

SIZES = {"ml-100k": (943, 1349, 99_287), "ml-1m": (6_040, 3_416, 1_000_209), "ml-20m": (138_493, 26_744, 20_000_263)}
TEMPLATES = {code: f"train_{code}" for code in ("vae", "bert", "sas", "tisas", "meantime", "marank")}
ORIGINAL_LOADERS = ("vae", "bert", "sas")  # families with the original approach implemented here


def synthetic_data(size: str, config, seed: int = 0) -> PreparedData:
    """Heavy-tailed users and items of the given size (every user >= 5 interactions)."""
    n_users, n_items, n_rows = SIZES[size]
    rng = np.random.default_rng(seed)
    lengths = rng.lognormal(0, 1.1, n_users)
    lengths = np.maximum(5, np.round(lengths / lengths.sum() * n_rows)).astype(np.int64)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.9
    users = np.repeat(np.arange(n_users), lengths)
    items = rng.choice(n_items, size=len(users), p=popularity / popularity.sum())
    raw = RawInteractions(users, items, np.arange(len(users), dtype=np.int64))
    seqs = build_sequences(raw, 0, 0, 5)
    train_negatives, pool = None, config.negative_pool
    if pool is not None:
        train_negatives = sample_negatives(seqs, pool.train_negative_sampler_code, pool.train_negative_sample_size,
                                           pool.train_negative_sampling_seed)
    return PreparedData(seqs, sample_negatives(seqs, "popular", 100, 98765), train_negatives,
                        Path(tempfile.mkdtemp()), size)


def peak_memory(device: torch.device) -> dict:
    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return {"peak_host_mb": round(host), "peak_device_mb": None if gpu is None else round(gpu)}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def val_batches(trainer: Trainer) -> int:
    return -(-trainer.data.sequences.n_users // trainer.config.evaluation.val_batch_size)


def time_esapr(trainer: Trainer, max_batches: int | None) -> dict:
    device = trainer.device
    seed_everything(1)
    trainer.train_epoch(1, limit=2)  # warm-up (allocations, kernels)
    sync(device)
    start = time.perf_counter()
    trainer.train_epoch(2, limit=max_batches)
    sync(device)
    train_s = time.perf_counter() - start
    total = trainer.batches.num_train_batches()
    done = total if max_batches is None else min(max_batches, total)
    val_total = val_batches(trainer)
    val_done = val_total if max_batches is None else min(max_batches, val_total)
    start = time.perf_counter()
    trainer.evaluate("val", limit=val_done)
    sync(device)
    val_s = (time.perf_counter() - start) * val_total / val_done
    start = time.perf_counter()
    for _ in trainer.batches.train_batches(3, limit=max_batches):
        pass
    sync(device)
    batches_s = (time.perf_counter() - start) * total / done
    return {"train_s": train_s * total / done, "val_s": val_s, "batches": total, "extrapolated": done < total,
            "examples_per_s": done * trainer.config.training.train_batch_size / train_s, "batch_building_s": batches_s}


class OriginalTrainSet(torch.utils.data.Dataset):
    """The original's per-example loaders (docs/original.md §3.3-3.5), run in the main process
    (num_workers 0, its template value) with a Python RNG, as it did."""

    def __init__(self, trainer: Trainer):
        b, self.options, self.seqs = trainer.batches, trainer.config.model, trainer.data.sequences
        self.code = trainer.config.run.model_code
        self.users, self.ends = b.train_users.cpu().numpy(), b.train_ends.cpu().numpy()
        self.pool = trainer.data.train_negatives
        self.rng = random.Random(0)

    def __len__(self):
        return len(self.users)

    def window(self, user: int, end: int, length: int) -> list[int]:
        return self.seqs.items[max(self.seqs.offsets[user], end - length): end].tolist()

    def __getitem__(self, i):
        user, end, n = self.users[i], self.ends[i], self.options.max_len
        if self.code == "vae":  # a dense (I+1) vector per example, weights recomputed
            label = torch.zeros(n, dtype=torch.long)
            window = self.window(user, end, n)
            label[-len(window):] = torch.tensor(window)
            bag = torch.zeros(self.seqs.n_items + 1)
            weight = original_weights(n, self.options.weight_constant)
            bag[label[:-1]] += weight[:-1]
            return {"bag": bag, "label": label}
        if self.code == "bert":  # masking token by token
            tokens, labels = [], []
            for item in self.window(user, end, n):
                u = self.rng.random()
                if u < self.options.mask_prob:
                    u /= self.options.mask_prob
                    tokens.append(self.seqs.n_items + 1 if u < 0.8 else
                                  self.rng.randint(1, self.seqs.n_items) if u < 0.9 else item)
                    labels.append(item)
                else:
                    tokens.append(item)
                    labels.append(0)
            return {"tokens": left_pad(tokens, n), "labels": left_pad(labels, n)}
        seq = self.window(user, end, n + 1)  # sas: next-item labels, one pool draw per label
        pool = self.pool[user].tolist()
        negatives = [self.rng.choice(pool) for _ in seq[1:]]
        return {"tokens": left_pad(seq[:-1], n), "labels": left_pad(seq[1:], n),
                "negative_labels": left_pad(negatives, n)}


def original_weights(n: int, constant: float) -> torch.Tensor:
    d = n - 1 - torch.arange(n)
    return constant ** (-torch.floor(torch.log2(d + 0.5)))


def typed_batch(batch: dict, device: torch.device) -> BagBatch | SequenceBatch:
    """The original loaders' dict on the device, as the batch type the models take."""
    batch = {key: value.to(device) for key, value in batch.items()}
    users = torch.zeros(len(next(iter(batch.values()))), dtype=torch.long, device=device)
    if "bag" in batch:
        slots = batch["label"][:, :-1]
        return BagBatch(users=users, labels=batch["label"], bag=batch["bag"], slots=slots,
                        last=last_occurrence(slots), candidates=batch.get("candidates"))
    return SequenceBatch(users=users, tokens=batch["tokens"], labels=batch.get("labels"),
                         negatives=batch.get("negative_labels"), candidates=batch.get("candidates"))


def left_pad(values: list[int], n: int) -> torch.Tensor:
    return torch.tensor([0] * (n - len(values)) + values, dtype=torch.long)


def original_eval_batch(trainer: Trainer, users: range) -> dict:
    """Validation inputs built user by user on the host, as the original's eval datasets."""
    options, code, seqs = trainer.config.model, trainer.config.run.model_code, trainer.data.sequences
    n, rows, labels, cands = options.max_len, [], [], []
    for u in users:
        answer_at = seqs.offsets[u + 1] - 2
        start = seqs.offsets[u]
        if code == "vae":
            window = seqs.items[max(start, answer_at + 1 - n): answer_at + 1].tolist()
            label = left_pad(window, n)
            bag = torch.zeros(seqs.n_items + 1)
            bag[label[:-1]] += original_weights(n, options.weight_constant)[:-1]
            rows.append(bag)
            labels.append(label)
        elif code == "bert":
            window = seqs.items[max(start, answer_at + 1 - n): answer_at + 1].tolist()
            rows.append(left_pad(window[:-1] + [seqs.n_items + 1], n))
        else:
            rows.append(left_pad(seqs.items[max(start, answer_at - n): answer_at].tolist(), n))
        cands.append(torch.as_tensor(np.concatenate([[seqs.items[answer_at]], trainer.data.test_negatives[u]])))
    batch = {"bag" if code == "vae" else "tokens": torch.stack(rows), "candidates": torch.stack(cands).long()}
    if labels:
        batch["label"] = torch.stack(labels)
    return typed_batch(batch, trainer.device)


def original_metrics(scores: torch.Tensor, ks) -> dict:
    """The original's per-batch CPU metrics: argsort every row, loop over ks."""
    scores = scores.cpu()
    labels = torch.zeros_like(scores)
    labels[:, 0] = 1
    rank = (-scores).argsort(dim=1)
    out = {}
    for k in sorted(ks, reverse=True):
        hits = labels.gather(1, rank[:, :k])
        weights = 1 / torch.log2(torch.arange(2, 2 + k).float())
        out[f"NDCG@{k}"] = float(((hits * weights).sum(1) / torch.tensor([weights[:1].sum()] * len(hits))).mean())
        out[f"Recall@{k}"] = float(hits.sum(1).mean())
    return out


def time_original(trainer: Trainer, max_batches: int | None) -> dict:
    """Same model, optimizer and precision (``Trainer.step``); the original's host-side loaders
    and CPU metrics."""
    config, device, model = trainer.config, trainer.device, trainer.model
    batch_size, val_batch_size = config.training.train_batch_size, config.evaluation.val_batch_size
    loader = torch.utils.data.DataLoader(OriginalTrainSet(trainer), batch_size=batch_size,
                                         shuffle=True, drop_last=True)
    model.train()
    sync(device)
    start, done = time.perf_counter(), 0
    for batch in loader:
        if max_batches is not None and done >= max_batches:
            break
        trainer.step(typed_batch(batch, device))
        done += 1
    sync(device)
    train_s = (time.perf_counter() - start) * len(loader) / max(1, done)
    start, built = time.perf_counter(), 0
    for batch in loader:
        if max_batches is not None and built >= max_batches:
            break
        batch = typed_batch(batch, device)
        built += 1
    sync(device)
    batches_s = (time.perf_counter() - start) * len(loader) / max(1, built)
    model.eval()
    start = time.perf_counter()
    n_users = trainer.data.sequences.n_users
    val_total = val_batches(trainer)
    val_done = val_total if max_batches is None else min(max_batches, val_total)
    with torch.no_grad():
        for first in range(0, val_done * val_batch_size, val_batch_size):
            batch = original_eval_batch(trainer, range(first, min(first + val_batch_size, n_users)))
            original_metrics(model.candidate_scores(batch), config.evaluation.metric_ks)
    sync(device)
    val_s = (time.perf_counter() - start) * val_total / val_done
    return {"train_s": train_s, "val_s": val_s, "batches": len(loader),
            "extrapolated": max_batches is not None and max_batches < len(loader),
            "examples_per_s": batch_size * len(loader) / max(1e-9, train_s), "batch_building_s": batches_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(TEMPLATES), default="vae")
    parser.add_argument("--size", choices=sorted(SIZES), default="ml-1m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max_batches", type=int, default=None)
    parser.add_argument("--baseline", action="store_true", help=f"also time the original approach ({', '.join(ORIGINAL_LOADERS)})")
    parser.add_argument("--baseline_batches", type=int, default=None,
                        help="time the original approach on this many batches (default: --max_batches)")
    parser.add_argument("--option", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    args = parser.parse_args()
    overrides = {"device": args.device, "full_ranking": False, **dict(args.option)}
    template = "train_vae_20m" if args.size == "ml-20m" and args.family == "vae" else TEMPLATES[args.family]
    config = build_config([template], overrides)
    data = synthetic_data(args.size, config)
    trainer = Trainer(config, data, progress=False)
    before = peak_memory(trainer.device)["peak_host_mb"]  # data, model and optimizer
    shape = {"users": data.sequences.n_users, "items": data.sequences.n_items,
             "interactions": data.sequences.n_interactions}
    device = trainer.device_name()
    result = {"what": f"{args.family} epoch (esapr)", "size": args.size, **shape, "device": device,
              "precision": trainer.precision.name, "compile": config.run.compile,
              **time_esapr(trainer, args.max_batches), **peak_memory(trainer.device), "host_mb_before_training": before}
    print(json.dumps(result), flush=True)
    if args.baseline and args.family in ORIGINAL_LOADERS:
        base = {"what": f"{args.family} epoch (original approach)", "size": args.size, **shape, "device": device,
                "precision": trainer.precision.name,
                **time_original(trainer, args.baseline_batches or args.max_batches), **peak_memory(trainer.device)}
        print(json.dumps(base), flush=True)
        ratio = (base["train_s"] + base["val_s"]) / (result["train_s"] + result["val_s"])
        building = base["batch_building_s"] / max(1e-9, result["batch_building_s"])
        print(json.dumps({"what": "speed-up over the original approach (train + validation)", "size": args.size,
                          "device": device, "ratio": round(ratio, 2), "batch_building_ratio": round(building, 1)}),
              flush=True)


if __name__ == "__main__":
    main()
