"""The arithmetic floor of a VAE epoch on this machine, next to the epoch itself.

Whatever the loader, an exact ESAPR step computes a softmax over every item, so the decoder's
last layer (hidden -> n_items+1) must run forward, backward to its input and backward to its
weights, in full, for every example. This times those three products plus the log-softmax on the
real epoch's batch shapes and compares them with a whole training epoch of the template. Their sum
times the number of epochs is a lower bound for the run's training time. Prints JSON lines.

    python benchmarks/vae_floor.py --data_file ../shared/data/ml-100k-original-order/ratings.csv --epochs 275
    python benchmarks/vae_floor.py --size ml-1m --epochs 1     # bench_train.py's synthetic data
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from esapr.config import build_config  # noqa: E402
from esapr.data.prepare import prepare_data  # noqa: E402
from esapr.training.trainer import Trainer, seed_everything  # noqa: E402

from bench_train import SIZES, synthetic_data  # noqa: E402


def output_layer_seconds(batch_sizes: list[int], hidden: int, vocab: int, repeats: int) -> float:
    """Best of ``repeats`` epochs of the output layer and log-softmax, forward and backward
    (to the hidden layer and to the weights), through autograd as in the model."""
    layer = torch.nn.Linear(hidden, vocab)
    inputs = [torch.randn(b, hidden, requires_grad=True) for b in batch_sizes]
    labels = [torch.randint(vocab, (b, 1)) for b in batch_sizes]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for h, label in zip(inputs, labels):
            torch.log_softmax(layer(h), dim=1).gather(1, label).sum().backward()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data_file", help="a ratings file (legacy negatives)")
    source.add_argument("--size", choices=sorted(SIZES), help="synthetic data of this dataset's size")
    parser.add_argument("--templates", default="train_vae")
    parser.add_argument("--epochs", type=int, default=275, help="epochs of the run to project (VAE_tw on ML-100K: 275)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.data_file:
        config = build_config([args.templates], {"data_file": args.data_file, "legacy_negatives": True, "device": "cpu"})
        data = prepare_data(config)
    else:
        config = build_config([args.templates], {"device": "cpu"})
        data = synthetic_data(args.size, config)
    trainer = Trainer(config, data, progress=False)
    sizes = [len(batch) for batch in trainer.batches.train_batches(1)]
    seed_everything(1)
    trainer.train_epoch(1)  # warm-up
    epoch_s = float("inf")
    for epoch in range(2, 2 + args.repeats):
        start = time.perf_counter()
        trainer.train_epoch(epoch)
        epoch_s = min(epoch_s, time.perf_counter() - start)
    hidden = (config.model.encoder_hidden_layer or [config.model.encode_len])[0]
    floor_s = output_layer_seconds(sizes, hidden, trainer.data.sequences.n_items + 1, args.repeats)
    print(json.dumps({"what": "VAE training epoch vs its output-layer floor", "templates": args.templates,
                      "data": args.size or args.data_file,
                      "threads": torch.get_num_threads(), "batches": len(sizes), "examples": sum(sizes),
                      "items": trainer.data.sequences.n_items, "epoch_s": round(epoch_s, 3),
                      "output_layer_s": round(floor_s, 3), "share": round(floor_s / epoch_s, 2),
                      "epochs": args.epochs, "run_training_s": round(epoch_s * args.epochs, 1),
                      "run_floor_s": round(floor_s * args.epochs, 1)}), flush=True)


if __name__ == "__main__":
    main()
