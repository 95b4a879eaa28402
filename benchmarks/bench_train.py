"""Time one training epoch and one validation pass per model family on synthetic data of a
real dataset's size, next to the original approach (per-example dense VAE vectors built on the
host, metrics by argsort on the CPU) measured in the same run. Prints one JSON object per line.

    python benchmarks/bench_train.py --family vae --size ml-1m --device cpu --baseline
    python benchmarks/bench_train.py --family bert --size ml-1m --device cuda --max_batches 50

``--max_batches`` times that many batches and extrapolates to the full epoch (reported as
``extrapolated``), for sizes too large to run whole on a CPU.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from esapr.config import build_config  # noqa: E402
from esapr.data.batches.vae import last_occurrence  # noqa: E402
from esapr.data.negatives import sample_negatives  # noqa: E402
from esapr.data.prepare import PreparedData  # noqa: E402
from esapr.data.sequences import build_sequences  # noqa: E402
from esapr.data.sources import RawInteractions  # noqa: E402
from esapr.training.trainer import Trainer, seed_everything  # noqa: E402

SIZES = {"ml-100k": (943, 1349, 99_287), "ml-1m": (6_040, 3_416, 1_000_209), "ml-20m": (138_493, 26_744, 20_000_263)}
TEMPLATES = {"vae": "train_vae", "bert": "train_bert", "sas": "train_sas"}


def synthetic_data(size: str, seed: int = 0) -> PreparedData:
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
    return PreparedData(seqs, sample_negatives(seqs, "popular", 100, 98765), None, Path(tempfile.mkdtemp()), size)


def peak_memory(device: torch.device) -> dict:
    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return {"peak_host_mb": round(host), "peak_device_mb": None if gpu is None else round(gpu)}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


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
    start = time.perf_counter()
    trainer.evaluate("val")
    sync(device)
    val_s = time.perf_counter() - start
    return {"train_s": train_s * total / done, "val_s": val_s, "batches": total, "extrapolated": done < total,
            "examples_per_s": done * trainer.config.train_batch_size / train_s}


class OriginalVaeTrainSet(torch.utils.data.Dataset):
    """The original loader (reference.md §3.5): one dense (I+1) vector per example, built in
    Python, weights recomputed on every call."""

    def __init__(self, seqs, users, ends, config):
        self.seqs, self.users, self.ends, self.config = seqs, users, ends, config

    def __len__(self):
        return len(self.users)

    def weights(self):
        n, c = self.config.max_len, self.config.weight_constant
        d = n - 1 - torch.arange(n)
        return c ** (-torch.floor(torch.log2(d + 0.5)))

    def __getitem__(self, i):
        start = self.seqs.offsets[self.users[i]]
        end = self.ends[i]
        window = self.seqs.items[max(start, end - self.config.max_len): end]
        label = torch.zeros(self.config.max_len, dtype=torch.long)
        label[-len(window):] = torch.as_tensor(window.astype(np.int64))
        data = torch.zeros(self.seqs.n_items + 1)
        weight = self.weights()
        data[label[:-1]] += weight[:-1]
        return {"bag": data, "label": label, "weight": weight}


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


def time_original_vae(trainer: Trainer, max_batches: int | None) -> dict:
    """Same model and optimizer; the original's host-side loader and CPU metrics."""
    config, device, model = trainer.config, trainer.device, trainer.model
    seqs = trainer.data.sequences
    b = trainer.batches
    dataset = OriginalVaeTrainSet(seqs, b.train_users.cpu().numpy(), b.train_ends.cpu().numpy(), config)
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.train_batch_size, shuffle=True, drop_last=True)
    model.train()
    sync(device)
    start, done = time.perf_counter(), 0
    for batch in loader:
        if max_batches is not None and done >= max_batches:
            break
        label = batch["label"].to(device)
        slots = label[:, :-1]
        trainer.optimizer.zero_grad()
        batch = {"bag": batch["bag"].to(device), "label": label, "slots": slots, "last": last_occurrence(slots)}
        loss = model.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        trainer.optimizer.step()
        done += 1
    sync(device)
    train_s = (time.perf_counter() - start) * len(loader) / max(1, done)
    model.eval()
    start = time.perf_counter()
    answers_at = seqs.offsets[1:] - 2
    with torch.no_grad():
        for first in range(0, seqs.n_users, config.val_batch_size):
            rows = range(first, min(first + config.val_batch_size, seqs.n_users))
            bags, cands = [], []
            for u in rows:
                end = answers_at[u] + 1
                window = seqs.items[max(seqs.offsets[u], end - config.max_len): end]
                label = torch.zeros(config.max_len, dtype=torch.long)
                label[-len(window):] = torch.as_tensor(window.astype(np.int64))
                data = torch.zeros(seqs.n_items + 1)
                data[label[:-1]] += dataset.weights()[:-1]
                bags.append(data)
                cands.append(torch.as_tensor(np.concatenate([[window[-1]], trainer.data.test_negatives[u]]).astype(np.int64)))
            bag = torch.stack(bags).to(device)
            logits = model({"bag": bag})[0]  # eval: no dropout, so slots are not needed
            logits[bag != 0] = -float("inf")
            logits[:, 0] = -float("inf")
            original_metrics(logits.gather(1, torch.stack(cands).to(device)), config.metric_ks)
    sync(device)
    return {"train_s": train_s, "val_s": time.perf_counter() - start, "batches": len(loader),
            "extrapolated": max_batches is not None and max_batches < len(loader),
            "examples_per_s": done * config.train_batch_size / max(1e-9, train_s * done / len(loader))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(TEMPLATES), default="vae")
    parser.add_argument("--size", choices=sorted(SIZES), default="ml-1m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max_batches", type=int, default=None)
    parser.add_argument("--baseline", action="store_true", help="also time the original approach (VAE only)")
    parser.add_argument("--option", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    args = parser.parse_args()
    data = synthetic_data(args.size)
    overrides = {"device": args.device, "full_ranking": False, **dict(args.option)}
    if args.size == "ml-20m" and args.family == "vae":
        overrides.setdefault("train_window", 128)  # the original's ML-20M setting
    config = build_config([TEMPLATES[args.family]], overrides)
    trainer = Trainer(config, data, progress=False)
    shape = {"users": data.sequences.n_users, "items": data.sequences.n_items,
             "interactions": data.sequences.n_interactions}
    device = str(trainer.device) + (f" ({torch.cuda.get_device_name()})" if trainer.device.type == "cuda" else "")
    result = {"what": f"{args.family} epoch (esapr)", "size": args.size, **shape, "device": device,
              **time_esapr(trainer, args.max_batches), **peak_memory(trainer.device)}
    print(json.dumps(result), flush=True)
    if args.baseline and args.family == "vae":
        base = {"what": "vae epoch (original approach)", "size": args.size, **shape, "device": device,
                **time_original_vae(trainer, args.max_batches), **peak_memory(trainer.device)}
        print(json.dumps(base), flush=True)
        ratio = (base["train_s"] + base["val_s"]) / (result["train_s"] + result["val_s"])
        print(json.dumps({"what": "speed-up over the original approach (train + validation)", "size": args.size,
                          "device": device, "ratio": round(ratio, 2)}), flush=True)


if __name__ == "__main__":
    main()
