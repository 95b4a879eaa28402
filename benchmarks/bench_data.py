"""Time the data pipeline stage by stage; one JSON object per stage on stdout, then a total.

    python benchmarks/make_synthetic.py --preset ml-20m --out /tmp/synth
    /usr/bin/time -v python benchmarks/bench_data.py --dataset_code ml-20m --local_data_folder /tmp/synth
    python benchmarks/bench_data.py --dataset_code ml-100k --local_data_folder DIR_WITH_ml-100k

Stages: ``read`` (raw file -> RawInteractions), ``preprocess`` (filter + dense ids + stable time
sort -> CSR Sequences), ``split`` (leave-one-out positions and answers), ``negatives`` (popular,
100 per user, fast sampler), ``cache_save`` / ``cache_load`` (the .npz). Caches are bypassed: every
stage runs. ``seconds`` is wall time, ``cpu_s`` user+system CPU time of this process (less
sensitive to other load on a shared machine), ``peak_rss_mb`` the process's peak resident memory
so far (getrusage), so the last line's value is the peak of the whole run.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from esapr.data.download import ensure_raw  # noqa: E402
from esapr.data.sequences import Sequences, build_sequences  # noqa: E402
from esapr.data.sources import SOURCES  # noqa: E402


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class Stages:
    def __init__(self, label: str):
        self.label, self.rows = label, []

    def run(self, what: str, function, rows_of=len):
        wall, cpu = time.perf_counter(), _cpu()
        result = function()
        record = {"what": what, "dataset": self.label, "rows": int(rows_of(result)),
                  "seconds": round(time.perf_counter() - wall, 3), "cpu_s": round(_cpu() - cpu, 3),
                  "peak_rss_mb": round(_peak_mb(), 1)}
        self.rows.append(record)
        print(json.dumps(record), flush=True)
        return result

    def total(self) -> dict:
        record = {"what": "total", "dataset": self.label,
                  "seconds": round(sum(r["seconds"] for r in self.rows), 3),
                  "cpu_s": round(sum(r["cpu_s"] for r in self.rows), 3),
                  "peak_rss_mb": round(_peak_mb(), 1)}
        print(json.dumps(record), flush=True)
        return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset_code", default="ml-20m", choices=sorted(SOURCES))
    parser.add_argument("--local_data_folder", type=Path, required=True)
    parser.add_argument("--min_rating", type=float, default=0)
    parser.add_argument("--min_sc", type=int, default=5)
    parser.add_argument("--min_uc", type=int, default=5)
    parser.add_argument("--negatives", type=int, default=100, help="popular negatives per user (0: skip)")
    parser.add_argument("--seed", type=int, default=98765)
    args = parser.parse_args()

    source = SOURCES[args.dataset_code]
    path = ensure_raw(source, args.local_data_folder, None)   # no download when the file is there
    stages = Stages(args.dataset_code)
    raw = stages.run("read", lambda: source.reader(path))
    seqs = stages.run("preprocess", partial(build_sequences, raw, args.min_rating, args.min_sc, args.min_uc),
                      rows_of=lambda s: s.n_interactions)
    del raw

    def split():
        positions = {name: seqs.target_positions(name) for name in ("train", "val", "test")}
        return {name: seqs.items[pos] for name, pos in positions.items() if name != "train"}
    stages.run("split", split, rows_of=lambda answers: len(answers["test"]))
    if args.negatives > 0:
        from esapr.data.negatives import sample_negatives
        stages.run("negatives", lambda: sample_negatives(seqs, "popular", args.negatives, args.seed))
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "sequences.npz"
        stages.run("cache_save", lambda: (seqs.save(cache), seqs)[1], rows_of=lambda s: s.n_interactions)
        loaded = stages.run("cache_load", lambda: Sequences.load(cache), rows_of=lambda s: s.n_interactions)
        assert np.array_equal(loaded.items, seqs.items)
    summary = seqs.stats()
    print(json.dumps({"what": "result", "dataset": args.dataset_code, "users": summary["users"],
                      "items": summary["items"], "interactions": summary["interactions"]}), flush=True)
    stages.total()


if __name__ == "__main__":
    main()
