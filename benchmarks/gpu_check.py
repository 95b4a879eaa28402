"""The one-shot GPU acceptance run: every GPU check of the speed, ESAPR, baseline and GPU-readiness
issues in one prepared command of at most 9 minutes.

    mkdir -p .gpu_data && cp ../shared/data/ml-100k-original-order/ratings.csv .gpu_data/
    python benchmarks/gpu_check.py --out "$OUT"                            # on the GPU
    python benchmarks/gpu_check.py --device cpu --quick --out /tmp/gpucheck  # the same steps, tiny

The device machine sees only the working tree, hence the copy of ML-100K (an untracked file
travels with it). Everything is written under ``--out``, as it comes: ``gpu_check.jsonl`` (one
JSON object per measurement, also printed), ``steps/<step>.log`` (each step's own output, line by
line), ``runs/`` (the experiment folders) and ``synthetic/``. A step stopped by its time limit or
the budget keeps what it wrote, and a training run cut short reports the epochs it finished.

Steps, most important first (no step starts after ``--budget_s``):
 1. the environment: torch, CUDA, GPU, compute capability, the mixed precision ``auto`` picks, TF32;
 2. VAE epoch on ML-1M-size data, the original approach side by side at the same precision
    (target: train + validation under 1 s);
 3. one fixed model (VAE_tw on ML-100K, default precision) evaluated on the GPU and on the CPU
    (metrics equal within 1e-4), and the same run forced to fp16 + GradScaler (the T4's path);
 4. BERT4Rec and SASRec epochs on ML-1M size with the original approach (targets under 3 s);
 5. VAE epoch on ML-20M size (``train_vae_20m``; target under 15 s and 15 GB);
 6. a whole VAE_tw schedule on ML-1M-size data (every transfer stage, at most 450 epochs; target
    under 5 min);
 7. the ML-1M-size VAE epoch again with ``--compile true``;
 8. the five baseline templates on ML-100K for 20 epochs each.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BASELINES = ("bert", "sas", "tisas", "meantime", "marank")
ML100K = [ROOT / ".gpu_data" / "ratings.csv", ROOT.parent / "shared/data/ml-100k-original-order/ratings.csv"]


def environment(device: str) -> dict:
    """What the numbers depend on: versions, the GPU, and the precision the trainer picks."""
    import torch
    from esapr.training.precision import choose_precision, native_bf16
    record = {"what": "environment", "python": platform.python_version(), "torch": torch.__version__,
              "cuda": torch.version.cuda, "cpu_count": os.cpu_count(), "device": device}
    if device == "cuda" and torch.cuda.is_available():
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        record.update(gpu=props.name, capability=".".join(map(str, torch.cuda.get_device_capability(index))),
                      gpu_memory_gb=round(props.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version(),
                      bf16_native=native_bf16(torch.device("cuda", index)),
                      bf16_supported_with_emulation=torch.cuda.is_bf16_supported())
        smi = shutil.which("nvidia-smi")
        if smi:
            query = [smi, "--query-gpu=driver_version", "--format=csv,noheader"]
            record["driver"] = subprocess.run(query, capture_output=True, text=True).stdout.strip()
    elif device == "cuda":
        record["error"] = "no GPU visible"
    target = torch.device("cuda" if "gpu" in record else "cpu")
    record.update(amp_auto=choose_precision(None, "auto", target).name,
                  tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32,
                  float32_matmul_precision=torch.get_float32_matmul_precision())
    return record


class Run:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        (self.out / "steps").mkdir(parents=True, exist_ok=True)
        self.log = open(self.out / "gpu_check.jsonl", "a")
        self.deadline = time.monotonic() + args.budget_s
        self.lock = threading.Lock()

    def emit(self, record: dict) -> None:
        line = json.dumps(record)
        with self.lock:
            print(line, flush=True)
            self.log.write(line + "\n")
            self.log.flush()

    def command(self, what: str, argv: list[str], timeout: float) -> list[dict] | None:
        """Run one step as a child process; its output goes line by line to steps/<what>.log as it
        comes, and each JSON object it prints is emitted at once (tagged with the step). A step
        past its time limit or the overall budget is stopped (what it wrote stays), a failure is
        reported, and the next step goes on. Returns the step's JSON objects, or None."""
        timeout = min(timeout, self.deadline - time.monotonic())
        if timeout < 10:
            self.emit({"what": what, "error": "skipped: the time budget is spent"})
            return None
        records: list[dict] = []
        log_path = self.out / "steps" / (re.sub(r"[^A-Za-z0-9.-]+", "_", what) + ".log")
        with open(log_path, "w") as log:
            log.write("$ " + " ".join(argv) + "\n")
            log.flush()
            child = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
            relay = threading.Thread(target=self._relay, args=(child.stdout, log, what, records))
            relay.start()
            try:
                child.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                relay.join()
                self.emit({"what": what, "error": f"stopped after {timeout:.0f} s (time limit); see {log_path.name}"})
                return None
            relay.join()
        if child.returncode != 0:
            tail = log_path.read_text().strip().splitlines()[-3:]
            self.emit({"what": what, "error": f"exit status {child.returncode}: {' | '.join(tail)[-600:]}"})
            return None
        return records

    def _relay(self, stream, log, what: str, records: list[dict]) -> None:
        for line in stream:
            log.write(line)
            log.flush()
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
                self.emit({"step": what, **record})

    def bench(self, family: str, size: str, baseline: bool, max_batches: int | None,
              baseline_batches: int | None = None, timeout: float = 150, **options) -> None:
        argv = [sys.executable, "benchmarks/bench_train.py", "--family", family, "--size", size,
                "--device", self.args.device]
        if baseline:
            argv.append("--baseline")
        if max_batches:
            argv += ["--max_batches", str(max_batches)]
        if baseline_batches:
            argv += ["--baseline_batches", str(baseline_batches)]
        for key, value in options.items():
            argv += ["--option", key, str(value)]
        self.command(" ".join(["bench", family, size, *options]), argv, timeout)

    def train(self, what: str, template: str, data_file: Path, options: dict, timeout: float = 120) -> Path | None:
        """One ``esapr train``; its results, or the epochs it finished when it was cut short.
        Returns the experiment folder of a finished run."""
        name = re.sub(r"[^A-Za-z0-9.-]+", "_", what)
        folder = self.out / "runs" / "check" / name
        argv = [sys.executable, "-m", "esapr", "train", "--templates", template, "--data_file", str(data_file),
                "--device", self.args.device, "--experiment_root", str(self.out / "runs"),
                "--experiment_group", "check", "--experiment_name", name, "--overwrite", "true"]
        for key, value in options.items():
            argv += [f"--{key}", str(value)]
        start = time.perf_counter()
        if self.command(what, argv, timeout) is None:
            self.partial(what, folder)
            return None
        wall = time.perf_counter() - start
        results = json.loads((folder / "results.json").read_text())
        test = results["test"]
        self.emit({"what": what, "device": results["device_name"], "precision": results["precision"],
                   "epochs": results["epochs"], "best_epoch": results["best_epoch"], "train_s": results["train_seconds"],
                   "s_per_epoch": round(results["train_seconds"] / max(1, results["epochs"]), 3),
                   "wall_s": round(wall, 1), "NDCG@10": test["NDCG@10"], "Recall@10": test["Recall@10"],
                   "NDCG@1": test["NDCG@1"], **options})
        return folder

    def partial(self, what: str, folder: Path) -> None:
        """What a training run cut short had done: its epochs and their training seconds."""
        log = folder / "tables" / "train_log.csv"
        rows = list(csv.DictReader(log.open())) if log.is_file() else []
        if rows:
            seconds = sum(float(row["seconds"]) for row in rows)
            self.emit({"what": what, "partial": True, "epochs_done": len(rows), "train_s": round(seconds, 1),
                       "s_per_epoch": round(seconds / len(rows), 3), "last_row": rows[-1]})

    def compare_evaluation(self, what: str, folder: Path) -> None:
        devices = [self.args.device, "cpu"]
        self.command(what, [sys.executable, "benchmarks/eval_devices.py", "--experiment", str(folder),
                            "--devices", *devices], timeout=120)


def ml100k_file(asked: str | None) -> Path | None:
    candidates = [Path(asked)] if asked else ML100K
    return next((path for path in candidates if path.is_file()), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--ml100k", default=None, help="ML-100K ratings, the original-order file (default: "
                                                       + " or ".join(str(path) for path in ML100K) + ")")
    parser.add_argument("--out", default="/tmp/esapr_gpu_check")
    parser.add_argument("--quick", action="store_true", help="two batches per benchmark, one batch per training run "
                                                          "(--pilot): to test this script")
    parser.add_argument("--budget_s", type=float, default=540, help="start no step after this many seconds")
    args = parser.parse_args()
    run = Run(args)
    quick = args.quick
    batches = 2 if quick else None
    started = time.monotonic()
    run.emit({"what": "start", "device": args.device, "quick": quick, "out": str(run.out)})
    try:
        run.emit(environment(args.device))
    except Exception as error:          # the checks go on without it
        run.emit({"what": "environment", "error": repr(error)})

    run.bench("vae", "ml-1m", baseline=True, max_batches=batches, baseline_batches=2 if quick else 40)

    ml100k = ml100k_file(args.ml100k)
    short = {"pilot": "true", "max_len": 50} if quick else {}
    same = {"legacy_negatives": "true", **(short or {"num_epochs": 25})}
    if ml100k is None:
        run.emit({"what": "ml-100k runs", "error": "no ML-100K file; copy it to .gpu_data/ratings.csv or pass --ml100k"})
    else:
        folder = run.train("vae_tw ml-100k", "train_vae", ml100k, same)
        if folder is not None:
            run.compare_evaluation("evaluation gpu vs cpu", folder)
        run.train("vae_tw ml-100k fp16", "train_vae", ml100k, {**same, "amp": "true", "amp_dtype": "fp16"})

    run.bench("bert", "ml-1m", baseline=True, max_batches=batches, baseline_batches=2 if quick else 20)
    run.bench("sas", "ml-1m", baseline=True, max_batches=batches, baseline_batches=2 if quick else 20)
    run.bench("vae", "ml-20m", baseline=True, max_batches=batches, baseline_batches=2 if quick else 100, timeout=240)

    ml1m = run.out / "synthetic" / "ml-20m" / "ratings.csv"      # ML-1M size in ML-20M's file format
    if not ml1m.exists():
        run.command("make ml-1m-size data", [sys.executable, "benchmarks/make_synthetic.py", "--preset", "ml-1m",
                                             "--out", str(ml1m.parents[1])], timeout=120)
    if ml1m.exists():
        run.train("vae_tw ml-1m-size", "train_vae", ml1m, short or {"num_epochs": 450}, timeout=330)

    run.bench("vae", "ml-1m", baseline=False, max_batches=batches, timeout=180, compile="true")

    if ml100k is not None:
        for code in BASELINES:
            options = {**same, **(short or {"num_epochs": 20})}
            if code == "sas":
                options["train_negative_sample_size"] = 700
            run.train(f"{code} ml-100k", f"train_{code}", ml100k, options)
    run.emit({"what": "done", "seconds": round(time.monotonic() - started, 1)})


if __name__ == "__main__":
    main()
