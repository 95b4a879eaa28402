"""Every GPU check of the speed, ESAPR and baseline issues in one prepared run (at most 560 s);
prints one JSON object per measurement and writes them all to ``<out>/gpu_check.jsonl``.

    python benchmarks/gpu_check.py --ml100k ../shared/data/ml-100k-original-order/ratings.csv
    python benchmarks/gpu_check.py --device cpu --quick --budget_s 3000   # the same steps, capped

Steps: epoch benchmarks with the original approach side by side (VAE on ML-1M and ML-20M size,
BERT4Rec and SASRec on ML-1M size); a full VAE_tw schedule on ML-1M-size data (all transfer
stages, at most 450 epochs); VAE_tw on ML-100K with and without mixed precision; the five
baseline templates on ML-100K for 20 epochs each. The steps run in that order (most important
first) and stop at ``--budget_s``, so the script ends within the 10 minutes a device command
may run. The package runs from the repository root without installing it; on a machine that
sees only the repository, copy the ML-100K file into it (e.g. an ignored ``.gpu_data/``) and
pass ``--ml100k``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINES = ("bert", "sas", "tisas", "meantime", "marank")


class Run:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = open(self.out / "gpu_check.jsonl", "a")
        self.deadline = time.monotonic() + args.budget_s

    def emit(self, record: dict) -> None:
        line = json.dumps(record)
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def command(self, what: str, argv: list[str], timeout: float) -> subprocess.CompletedProcess | None:
        """Run one step; a failure or a timeout is reported and the next step goes on. Steps stop
        at the overall budget, so the whole script ends within it."""
        timeout = min(timeout, self.deadline - time.monotonic())
        if timeout < 10:
            self.emit({"what": what, "error": "skipped: the time budget is spent"})
            return None
        try:
            done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            self.emit({"what": what, "error": f"timed out after {timeout:.0f} s"})
            return None
        if done.returncode != 0:
            self.emit({"what": what, "error": (done.stderr or done.stdout).strip()[-600:]})
            return None
        return done

    def bench(self, family: str, size: str, baseline: bool, max_batches: int | None,
              baseline_batches: int | None = None) -> None:
        argv = [sys.executable, "benchmarks/bench_train.py", "--family", family, "--size", size,
                "--device", self.args.device]
        if baseline:
            argv.append("--baseline")
        if max_batches:
            argv += ["--max_batches", str(max_batches)]
        if baseline_batches:
            argv += ["--baseline_batches", str(baseline_batches)]
        done = self.command(f"bench {family} {size}", argv, timeout=300)
        for line in done.stdout.splitlines() if done else []:
            self.emit(json.loads(line))

    def train(self, what: str, template: str, data_file: Path, options: dict) -> None:
        name = what.replace(" ", "_")
        argv = [sys.executable, "-m", "esapr", "train", "--templates", template, "--data_file", str(data_file),
                "--device", self.args.device, "--experiment_root", str(self.out / "runs"),
                "--experiment_name", name, "--overwrite", "true"]
        for key, value in options.items():
            argv += [f"--{key}", str(value)]
        start = time.perf_counter()
        if self.command(what, argv, timeout=330) is None:
            return
        wall = time.perf_counter() - start
        folder = next((self.out / "runs").glob(f"*/{name}"))
        results = json.loads((folder / "results.json").read_text())
        test = results["test"]
        self.emit({"what": what, "device": results["device"], "epochs": results["epochs"],
                   "best_epoch": results["best_epoch"], "train_s": results["train_seconds"],
                   "s_per_epoch": round(results["train_seconds"] / max(1, results["epochs"]), 3),
                   "wall_s": round(wall, 1), "NDCG@10": test["NDCG@10"], "Recall@10": test["Recall@10"],
                   "NDCG@1": test["NDCG@1"], **options})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--ml100k", default=str(ROOT.parent / "shared/data/ml-100k-original-order/ratings.csv"),
                        help="ML-100K ratings (the original-order file: the issues' reference numbers)")
    parser.add_argument("--out", default="/tmp/esapr_gpu_check")
    parser.add_argument("--quick", action="store_true", help="one or two epochs and batches per step")
    parser.add_argument("--budget_s", type=float, default=560, help="stop starting steps after this many seconds")
    args = parser.parse_args()
    run = Run(args)
    quick = args.quick
    run.emit({"what": "start", "device": args.device, "quick": quick})

    run.bench("vae", "ml-1m", baseline=True, max_batches=2 if quick else None)
    run.bench("bert", "ml-1m", baseline=True, max_batches=2 if quick else None)
    run.bench("sas", "ml-1m", baseline=True, max_batches=2 if quick else None)
    run.bench("vae", "ml-20m", baseline=True, max_batches=2 if quick else None, baseline_batches=2 if quick else 100)

    synthetic = run.out / "synthetic"
    ml1m = synthetic / "ml-20m" / "ratings.csv"
    if not ml1m.exists():
        run.command("make ml-1m-size data", [sys.executable, "benchmarks/make_synthetic.py", "--preset", "ml-1m",
                                             "--out", str(synthetic)], timeout=300)
    run.train("vae_tw ml-1m-size", "train_vae", ml1m, {"num_epochs": 2 if quick else 450})

    ml100k = Path(args.ml100k)
    if not ml100k.exists():
        run.emit({"what": "ml-100k runs", "error": f"{ml100k} not found; pass --ml100k"})
        return
    same = {"legacy_negatives": "true"}
    for amp in ("true", "false"):
        run.train(f"vae_tw ml-100k amp {amp}", "train_vae", ml100k,
                  {**same, "amp": amp, "num_epochs": 2 if quick else 0})
    for code in BASELINES:
        options = {**same, "num_epochs": 1 if quick else 20}
        if code == "sas":
            options["train_negative_sample_size"] = 700
        run.train(f"{code} ml-100k", f"train_{code}", ml100k, options)
    run.emit({"what": "done"})


if __name__ == "__main__":
    main()
