"""Options -> PreparedData: raw file (downloaded once) -> cached sequences -> cached negatives.

Each cache is keyed by exactly the options that change it, so changing ``lr`` never
re-preprocesses and changing ``min_uc`` always does.
"""
from __future__ import annotations

import hashlib
import sys
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from esapr.config import Config
from esapr.options.groups import DataOptions
from esapr.data.negatives import cached_negatives
from esapr.data.sequences import Sequences, build_sequences
from esapr.data.sources import SOURCES, file_fingerprint, read_user_file
from esapr.errors import UserError
from esapr.files import FolderLock, remove_leftovers


@dataclass
class PreparedData:
    sequences: Sequences
    test_negatives: np.ndarray              # [n_users, test_negative_sample_size], dense item ids
    train_negatives: np.ndarray | None      # [n_users, train_negative_sample_size] or None
    cache_dir: Path
    name: str                               # dataset code or user-file label
    raw_folder: Path | None = None          # where the raw dataset lives (for titles)
    timings: dict = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """A hash of what a run is trained and evaluated on: the sequences with their id maps and
        the negatives. Equal fingerprints mean the same data, whatever the file or cache."""
        if "fingerprint" not in self.timings:
            digest = hashlib.sha1()
            seqs = self.sequences
            for array in (seqs.offsets, seqs.items, seqs.timestamps, seqs.user_ids, seqs.item_ids,
                          self.test_negatives, self.train_negatives):
                if array is not None:
                    array = np.ascontiguousarray(array)
                    digest.update(f"{array.dtype}{array.shape}".encode())
                    digest.update(array.tobytes())
            self.timings["fingerprint"] = digest.hexdigest()[:16]
        return self.timings["fingerprint"]

    def titles(self) -> dict:
        """Original item id -> title, where the dataset has titles (MovieLens)."""
        source = SOURCES.get(self.name)
        if source is None or source.titles is None or self.raw_folder is None:
            return {}
        return source.titles(self.raw_folder)


def raw_file(data: DataOptions) -> Path:
    """The raw ratings file: the user's, or the registry dataset's (downloaded once)."""
    if data.data_file:
        path = Path(data.data_file)
        if path.is_dir():
            raise UserError(f"{path}: is a folder; --data_file takes a ratings or sequence file")
        if path.exists() and not path.is_file():
            raise UserError(f"{path}: not a regular file (a pipe or a device); save the data to a file and pass "
                            f"that as --data_file")
        if not path.is_file():
            raise UserError(f"{path}: file not found; check --data_file")
        return path
    if data.dataset_code not in SOURCES:
        raise UserError(f"unknown dataset_code '{data.dataset_code}'; choose one of {', '.join(SOURCES)} "
                        f"or pass --data_file")
    from esapr.data.download import ensure_raw
    return ensure_raw(SOURCES[data.dataset_code], Path(data.local_data_folder), data.data_url)


def cache_dir(data: DataOptions, raw: Path) -> Path:
    """Keyed by the raw file's fingerprint and exactly the options that change the sequences."""
    label = f"file-{raw.stem}" if data.data_file else data.dataset_code
    unit = "" if data.timestamp_unit == "auto" else f"-time_{data.timestamp_unit}"
    name = (f"{label}-{file_fingerprint(raw)}{unit}_min_rating{float(data.min_rating)!r}-min_uc{data.min_uc}"
            f"-min_sc{data.min_sc}-split{data.split}")
    return Path(data.local_data_folder) / "preprocessed" / name


# per unit: seconds in one, and the largest value that unit gives before the year 5000
UNITS = {"s": (1, 10**11), "ms": (10**3, 10**14), "us": (10**6, 10**17), "ns": (10**9, 2**63)}


def in_seconds(timestamps: np.ndarray, unit: str, raw: Path) -> np.ndarray:
    """Unix timestamps in seconds; ``auto`` takes the unit the values' size implies (a timestamp of
    milliseconds read as seconds would put the data in the year 50000)."""
    largest = int(np.abs(timestamps).max()) if len(timestamps) else 0
    if unit == "auto":
        unit = next(name for name, (_, limit) in UNITS.items() if largest < limit)
        if unit != "s":
            print(f"esapr: {raw.name}: timestamps up to {largest:,} read as {unit} (--timestamp_unit to say otherwise)",
                  file=sys.stderr)
    scale, limit = UNITS[unit]
    if largest >= limit:
        raise UserError(f"{raw}: timestamps up to {largest:,} are not {unit} since 1970 (they would lie after the "
                        f"year 5000); check the file's timestamp column or pass --timestamp_unit")
    return timestamps // scale if scale > 1 else timestamps


@contextmanager
def cache_lock(folder: Path):
    """One process at a time prepares a cache; another waits for it, then reads what it made."""
    lock = FolderLock(folder, "it is preparing this data")
    lock.acquire(wait=True, on_wait=lambda message: print(f"esapr: {message}", file=sys.stderr))
    try:
        remove_leftovers(folder)
        yield
    finally:
        lock.release()


def load_sequences(data: DataOptions) -> tuple[Sequences, Path, Path]:
    """(sequences, cache folder, raw file): from the cache, or read + preprocess + cache them."""
    raw = raw_file(data)
    folder = cache_dir(data, raw)
    path = folder / "sequences.npz"
    with cache_lock(folder):
        if path.is_file():
            try:
                return Sequences.load(path), folder, raw
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
                path.unlink()  # a damaged cache is rebuilt, never used
        frame = read_user_file(raw) if data.data_file else SOURCES[data.dataset_code].reader(raw)
        frame.timestamp = in_seconds(frame.timestamp, data.timestamp_unit, raw)
        sequences = build_sequences(frame, data.min_rating, data.min_sc, data.min_uc)
        sequences.save(path)
    return sequences, folder, raw


def test_negatives(data: DataOptions, sequences: Sequences, folder: Path) -> np.ndarray:
    """The evaluation negatives of the prepared sequences in ``folder`` (cached there)."""
    with cache_lock(folder):
        return cached_negatives(sequences, folder, data.test_negative_sampler_code, data.test_negative_sample_size,
                                data.test_negative_sampling_seed, legacy=data.legacy_negatives)


def prepare_data(config: Config) -> PreparedData:
    """The run's data: sequences, test negatives and, where its family has a pool, training negatives."""
    data, pool = config.data, config.negative_pool
    start = time.perf_counter()
    sequences, folder, raw = load_sequences(data)
    loaded = time.perf_counter()
    negatives = test_negatives(data, sequences, folder)
    train_negatives = None
    if pool is not None:
        with cache_lock(folder):
            train_negatives = cached_negatives(sequences, folder, pool.train_negative_sampler_code,
                                               pool.train_negative_sample_size, pool.train_negative_sampling_seed,
                                               legacy=data.legacy_negatives)
    done = time.perf_counter()
    name = f"file-{raw.stem}" if data.data_file else data.dataset_code
    raw_folder = None if data.data_file else raw.parent
    return PreparedData(sequences, negatives, train_negatives, folder, name, raw_folder,
                        {"sequences_s": loaded - start, "negatives_s": done - loaded})
