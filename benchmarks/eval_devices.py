"""Evaluate one trained experiment's best model on two devices and compare: the metrics and each
user's rank, scored in float32 as the trainer does. For the record, the same model is also scored
under bf16 and fp16 autocast on the first device (how evaluation ran before issue 15): low-precision
scores tie, and a tie counts against the answer. Prints one JSON object per line.

    python benchmarks/eval_devices.py --experiment runs/check/vae_tw_ml-100k --devices cuda cpu
"""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from esapr.data.prepare import prepare_data  # noqa: E402
from esapr.experiment import Experiment  # noqa: E402
from esapr.training.evaluator import Evaluation, load_run  # noqa: E402

TOLERANCE = 1e-4
LOW_PRECISION = {"bf16": torch.bfloat16, "fp16": torch.float16}


def evaluate(path: Path, device: str, split: str, autocast: str | None = None) -> Evaluation:
    experiment = Experiment(path)
    config = experiment.run_config(device=device)
    run = load_run(experiment, config, prepare_data(config))
    context = torch.autocast(run.device.type, dtype=LOW_PRECISION[autocast]) if autocast else nullcontext()
    with context:
        return run.evaluate(split)


def compare(a: Evaluation, b: Evaluation) -> dict:
    diff = max(abs(a.metrics[name] - b.metrics[name]) for name in a.metrics)
    return {"max_abs_diff": diff, "users_with_another_rank": int((a.ranks != b.ranks).sum()),
            "users": int(len(a.ranks)), "NDCG@10": [a.metrics["NDCG@10"], b.metrics["NDCG@10"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--devices", nargs=2, default=["cuda", "cpu"])
    parser.add_argument("--split", default="test", choices=("val", "test"))
    args = parser.parse_args()
    path = Path(args.experiment)
    first, second = (evaluate(path, device, args.split) for device in args.devices)
    result = compare(first, second)
    print(json.dumps({"what": "float32 evaluation on two devices", "devices": args.devices, **result,
                      f"within_{TOLERANCE:g}": result["max_abs_diff"] <= TOLERANCE}), flush=True)
    for name in LOW_PRECISION:
        low = compare(first, evaluate(path, args.devices[0], args.split, autocast=name))
        print(json.dumps({"what": f"{name} autocast evaluation against float32 (not used: for the record)",
                          "device": args.devices[0], **low}), flush=True)


if __name__ == "__main__":
    main()
