"""The closed-form parts before and after issue 24, side by side in one run: EASE's lambda grid
(solve and validation pass per lambda) and ESAPR+'s linear path (the solve a run starts with, one
validation pass). Each case runs in a process of its own, so its peak resident memory
(``ru_maxrss``) is its own; prints one JSON object.

    python benchmarks/closed_form.py                             # Amazon Sports, 20k users x 8k items
    python benchmarks/closed_form.py --users 5000 --items 3000 --lambdas 7

Data: ``../shared/data/amazon-sports/sequences.txt`` where it exists, cut to the ``--items`` most
frequent items and the first ``--users`` users keeping at least 5 of them; else synthetic
sequences of that size (Zipf items, 8.6 items a user on average). esapr's own 5-core filter then
applies. Cases:

- ``ease_before``: the old code: per lambda a Cholesky inverse that keeps its regularised copy and
  a new matrix for B, validation rows dense ``[users, V] @ [V, V]``.
- ``ease_after``: this version: the lean Cholesky inverse, validation rows sparse (``torch.sparse.mm``).
- ``ease_eigh``: the alternative not taken: one eigendecomposition of the Gram matrix for the
  whole grid, P = Q diag(1/(e + lambda)) Qᵀ per lambda (its largest difference from the Cholesky
  P in float64 is reported), validation as ``ease_after``.
- ``esapr_plus_before``: the old code: every run solves W (SLIST's solve with its temporaries),
  then a dense validation pass.
- ``esapr_plus_first`` / ``esapr_plus_later``: this version: the first run solves and caches W,
  a later run (another seed or trial) reads it; sparse validation passes.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import esapr.data.batches.history as history  # noqa: E402
import esapr.models.esapr_plus as esapr_plus  # noqa: E402
from esapr.config import build_config  # noqa: E402
from esapr.data.prepare import prepare_data  # noqa: E402
from esapr.models.ease import EASE  # noqa: E402
from esapr.models.esapr_plus import EsaprPlus  # noqa: E402
from esapr.models.linear import gram  # noqa: E402
from esapr.models.slist import slist_grams  # noqa: E402
from esapr.training.trainer import Trainer  # noqa: E402

AMAZON = REPO.parent / "shared" / "data" / "amazon-sports" / "sequences.txt"
CASES = ("ease_before", "ease_after", "ease_eigh", "esapr_plus_before", "esapr_plus_first", "esapr_plus_later")


# --- the old code, as it was before issue 24 ------------------------------------------------------------
def old_ridge_inverse(gram_matrix: torch.Tensor, lam: float) -> torch.Tensor:
    regularised = gram_matrix.clone()
    regularised.diagonal().add_(lam)
    return torch.cholesky_inverse(torch.linalg.cholesky(regularised))


def old_ease_fit(self, setting, batches) -> None:
    if self.user_gram is None:
        rows = batches.user_rows().to(self.solve_dtype)
        self.user_gram = gram(rows, rows)
    p = old_ridge_inverse(self.user_gram, setting["ease_lambda"])
    b = p / -torch.diagonal(p)
    b.fill_diagonal_(0.0)
    self.weights.copy_(b)


def old_slist_weights(grams, lam: float, alpha: float) -> torch.Tensor:
    xx, ss, st = grams
    shared = alpha * xx
    p = old_ridge_inverse(shared + (1 - alpha) * ss, lam)
    w = p @ (shared + (1 - alpha) * st)
    w -= p * (torch.diagonal(w) / torch.diagonal(p))
    w.fill_diagonal_(0.0)
    return w


def old_esapr_plus_prepare(self, data) -> None:
    histories = history.RecentHistoryBatches(data, self.options, None, self.linear.device)
    grams = slist_grams(histories, self.solve_dtype)
    self.linear.copy_(old_slist_weights(grams, self.options.linear_lambda, self.options.linear_alpha))


def dense_scoring(device) -> bool:
    return False


# --- the eigendecomposition alternative -----------------------------------------------------------------
class EighFit:
    """EASE's grid from one eigendecomposition of XᵀX; ``max_diff``: the largest |P_eigh -
    P_cholesky| at the first lambda (its Cholesky P is not timed, but counts in the peak memory)."""

    def __init__(self):
        self.basis = self.max_diff = None
        self.eigh_s = 0.0

    def __call__(self, model, setting, batches) -> float:
        """Fits ``setting``; returns the seconds of the check, to leave out of the solve's time."""
        lam, check = setting["ease_lambda"], 0.0
        if self.basis is None:
            rows = batches.user_rows().to(model.solve_dtype)
            user_gram = gram(rows, rows)
            start = time.perf_counter()
            self.basis = torch.linalg.eigh(user_gram)
            self.eigh_s = time.perf_counter() - start
        values, vectors = self.basis
        p = (vectors / (values + lam)) @ vectors.T
        if self.max_diff is None:
            start = time.perf_counter()
            self.max_diff = float((p - old_ridge_inverse(user_gram, lam)).abs().max())
            check = time.perf_counter() - start
        p /= -torch.diagonal(p).clone()
        p.fill_diagonal_(0.0)
        model.weights.copy_(p)
        return check


# --- data -----------------------------------------------------------------------------------------------
def write_sequences(out: Path, users: int, items: int, seed: int = 0) -> str:
    """A sequence file (``user item item ...``) of about ``users`` x ``items``; returns its origin."""
    if AMAZON.is_file():
        lines = [line.split() for line in AMAZON.read_text().splitlines()]
        counts = collections.Counter(item for line in lines for item in line[1:])
        keep = {item for item, _ in counts.most_common(items)}
        kept = [[line[0]] + [i for i in line[1:] if i in keep] for line in lines]
        kept = [line for line in kept if len(line) > 5][:users]
        origin = f"amazon-sports: the {items:,} most frequent items, the first {len(kept):,} users with >= 5 of them"
    else:
        rng = np.random.default_rng(seed)
        popularity = 1.0 / np.arange(1, items + 1) ** 0.9
        lengths = np.maximum(5, rng.geometric(1 / 4.6, users) + 4)
        kept = [[str(u + 1)] + [str(i + 1) for i in rng.choice(items, n, p=popularity / popularity.sum())]
                for u, n in enumerate(lengths)]
        origin = f"synthetic: {users:,} users, {items:,} Zipf items, 5 + geometric lengths"
    out.write_text("\n".join(" ".join(line) for line in kept) + "\n")
    return origin


def config_of(template: str, args, **extra):
    options = {"data_file": str(args.folder / "sequences.txt"), "local_data_folder": str(args.folder / "data"),
               "experiment_root": str(args.folder / "runs"), "device": "cpu", **extra}
    return build_config([template], options)


# --- one case in this process ---------------------------------------------------------------------------
class Clock:
    """Wall and CPU (this process, all threads) seconds since the last ``lap``."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        lap = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return lap


def run_case(case: str, args) -> dict:
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    if case.startswith("ease"):
        config = config_of("train_ease", args)
        lambdas = config.model.ease_lambdas[:args.lambdas]
        config = config_of("train_ease", args, ease_lambdas=lambdas)
    else:
        config = config_of("train_esapr_plus", args)
    data = prepare_data(config)
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    eigh = EighFit()
    if case == "ease_before":
        EASE.fit_closed_form, history.sparse_scoring = old_ease_fit, dense_scoring
    checks = []
    if case == "ease_eigh":
        EASE.fit_closed_form = lambda self, setting, batches: checks.append(eigh(self, setting, batches))
    if case == "esapr_plus_before":
        EsaprPlus.prepare, esapr_plus.sparse_scoring = old_esapr_plus_prepare, dense_scoring
    clock = Clock()
    trainer = Trainer(config, data, progress="quiet")
    wall, cpu = clock.lap()
    result = {"case": case, "prepare_s": round(wall, 2), "prepare_cpu_s": round(cpu, 2),
              "threads": torch.get_num_threads(),
              "scoring": trainer.model.compute_note() if case != "esapr_plus_before" else "dense item-item scoring"}
    if case.startswith("ease"):
        solve, validation, ndcg = np.zeros(2), np.zeros(2), []
        for epoch in range(1, len(lambdas) + 1):
            clock.lap()
            trainer.run_epoch(epoch)            # the fit of lambda number ``epoch`` (the first: XᵀX too)
            solve += clock.lap()
            ndcg.append(round(trainer.evaluate("val").metrics["full_NDCG@10"], 6))
            validation += clock.lap()
        solve -= sum(checks)                    # eigh's exactness check (wall ~ cpu: a rough correction)
        result.update(lambdas=lambdas, solve_s=round(solve[0], 2), solve_cpu_s=round(solve[1], 2),
                      validation_s=round(validation[0], 2), validation_cpu_s=round(validation[1], 2),
                      grid_s=round(solve[0] + validation[0], 2), grid_cpu_s=round(solve[1] + validation[1], 2),
                      val_full_ndcg10=ndcg)
        if case == "ease_eigh":
            result.update(eigh_s=round(eigh.eigh_s, 2), max_abs_diff_vs_cholesky=eigh.max_diff,
                          dtype=str(trainer.model.solve_dtype))
    else:
        clock.lap()
        metrics = trainer.evaluate("val").metrics
        wall, cpu = clock.lap()
        result.update(validation_s=round(wall, 2), validation_cpu_s=round(cpu, 2),
                      val_full_ndcg10=round(metrics["full_NDCG@10"], 6), val_ndcg10=round(metrics["NDCG@10"], 6))
    result.update(peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                  rss_after_data_mb=round(rss_data))
    return result


# --- the whole run --------------------------------------------------------------------------------------
def machine() -> dict:
    info = {"cpu": "?", "cores": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "load_average_start": [round(x, 2) for x in os.getloadavg()]}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            info["cpu"] = line.split(":", 1)[1].strip()
            break
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            info["memory_gb"] = round(int(line.split()[1]) / 2**20, 1)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=8_000)
    parser.add_argument("--lambdas", type=int, default=3, help="the first N of train_ease's grid (default 3 of 7)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per case (default: torch's)")
    parser.add_argument("--folder", type=Path, default=Path("/tmp/esapr_closed_form"))
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--case", help=argparse.SUPPRESS)       # one case, in a child process
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args)))
        return
    info = {**machine(), "threads_per_case": args.threads or torch.get_num_threads()}
    args.folder.mkdir(parents=True, exist_ok=True)
    origin = write_sequences(args.folder / "sequences.txt", args.users, args.items)
    data = prepare_data(config_of("train_ease", args))
    seqs = data.sequences
    shutil.rmtree(data.cache_dir / "linear", ignore_errors=True)        # the first ESAPR+ run solves
    cases = {}
    for case in args.cases:
        child = subprocess.run([sys.executable, __file__, "--case", case, "--users", str(args.users), "--items",
                                str(args.items), "--lambdas", str(args.lambdas), "--folder", str(args.folder),
                                "--threads", str(args.threads)],
                               capture_output=True, text=True)
        if child.returncode:
            cases[case] = {"error": child.stderr.strip().splitlines()[-1:]}
        else:
            cases[case] = json.loads(child.stdout.strip().splitlines()[-1])
        print(json.dumps(cases[case]), file=sys.stderr, flush=True)
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report = {"machine": info, "data": {"origin": origin, "users": seqs.n_users, "items": seqs.n_items,
                                        "interactions": seqs.n_interactions,
                                        "items_per_user": round(seqs.n_interactions / seqs.n_users, 2)},
              "cases": cases, "ratios": ratios(cases)}
    print(json.dumps(report, indent=2))


def ratios(cases: dict) -> dict:
    """before / after of what each case pair measures (> 1: the new code is better)."""
    def ratio(before, after, key):
        a, b = cases.get(before, {}).get(key), cases.get(after, {}).get(key)
        return round(a / b, 2) if a and b else None
    return {"ease_grid_seconds": ratio("ease_before", "ease_after", "grid_s"),
            "ease_grid_cpu_seconds": ratio("ease_before", "ease_after", "grid_cpu_s"),
            "ease_validation_seconds": ratio("ease_before", "ease_after", "validation_s"),
            "ease_validation_cpu_seconds": ratio("ease_before", "ease_after", "validation_cpu_s"),
            "ease_solve_cpu_seconds": ratio("ease_before", "ease_after", "solve_cpu_s"),
            "ease_peak_rss": ratio("ease_before", "ease_after", "peak_rss_mb"),
            "ease_solve_cpu_eigh_over_cholesky": ratio("ease_eigh", "ease_after", "solve_cpu_s"),
            "esapr_plus_validation_seconds": ratio("esapr_plus_before", "esapr_plus_later", "validation_s"),
            "esapr_plus_validation_cpu_seconds": ratio("esapr_plus_before", "esapr_plus_later", "validation_cpu_s"),
            "esapr_plus_start_seconds_later_run": ratio("esapr_plus_before", "esapr_plus_later", "prepare_s"),
            "esapr_plus_start_cpu_seconds_later_run": ratio("esapr_plus_before", "esapr_plus_later", "prepare_cpu_s"),
            "esapr_plus_peak_rss_later_run": ratio("esapr_plus_before", "esapr_plus_later", "peak_rss_mb"),
            "esapr_plus_peak_rss_first_run": ratio("esapr_plus_before", "esapr_plus_first", "peak_rss_mb")}


if __name__ == "__main__":
    main()
