"""Config -> PreparedData: raw file (downloaded once) -> cached sequences -> cached negatives.

Each cache is keyed by exactly the options that change it, so changing ``lr`` never
re-preprocesses and changing ``min_uc`` always does.
"""
from __future__ import annotations

import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from esapr.config import Config
from esapr.data.negatives import cached_negatives
from esapr.data.sequences import Sequences, build_sequences
from esapr.data.sources import SOURCES, DatasetSource, file_fingerprint, read_user_file
from esapr.errors import UserError


@dataclass
class PreparedData:
    sequences: Sequences
    test_negatives: np.ndarray              # [n_users, test_negative_sample_size], dense item ids
    train_negatives: np.ndarray | None      # [n_users, train_negative_sample_size] or None
    cache_dir: Path
    name: str                               # dataset code or user-file label
    raw_folder: Path | None = None          # where the raw dataset lives (for titles)
    timings: dict = field(default_factory=dict)

    def titles(self) -> dict:
        """Original item id -> title, where the dataset has titles (MovieLens)."""
        source = SOURCES.get(self.name)
        if source is None or source.titles is None or self.raw_folder is None:
            return {}
        return source.titles(self.raw_folder)


def dataset_label(config: Config) -> str:
    if config.data_file:
        path = Path(config.data_file)
        if not path.is_file():
            raise UserError(f"{path}: file not found; check --data_file")
        return f"file-{path.stem}-{file_fingerprint(path)}"
    if config.dataset_code not in SOURCES:
        raise UserError(f"unknown dataset_code '{config.dataset_code}'; choose one of {', '.join(SOURCES)} "
                        f"or pass --data_file")
    return config.dataset_code


def cache_dir(config: Config) -> Path:
    name = (f"{dataset_label(config)}_min_rating{config.min_rating:g}-min_uc{config.min_uc}"
            f"-min_sc{config.min_sc}-split{config.split}")
    return Path(config.local_data_folder) / "preprocessed" / name


def load_sequences(config: Config) -> tuple[Sequences, Path, Path | None]:
    """Sequences from the cache, or read + preprocess + cache them."""
    folder = cache_dir(config)
    path = folder / "sequences.npz"
    raw_folder = None if config.data_file else Path(config.local_data_folder) / config.dataset_code
    if path.is_file():
        try:
            return Sequences.load(path), folder, raw_folder
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            path.unlink()  # a damaged cache is rebuilt, never used
    if config.data_file:
        raw = read_user_file(Path(config.data_file))
    else:
        from esapr.data.download import ensure_raw
        source: DatasetSource = SOURCES[config.dataset_code]
        raw = source.reader(ensure_raw(source, Path(config.local_data_folder), config.data_url))
    sequences = build_sequences(raw, config.min_rating, config.min_sc, config.min_uc)
    sequences.save(path)
    return sequences, folder, raw_folder


def prepare_data(config: Config) -> PreparedData:
    start = time.perf_counter()
    sequences, folder, raw_folder = load_sequences(config)
    loaded = time.perf_counter()
    test_negatives = cached_negatives(sequences, folder, config.test_negative_sampler_code,
                                      config.test_negative_sample_size, config.test_negative_sampling_seed,
                                      legacy=config.legacy_negatives)
    train_negatives = None
    if config.train_negative_sample_size > 0:
        train_negatives = cached_negatives(sequences, folder, config.train_negative_sampler_code,
                                           config.train_negative_sample_size, config.train_negative_sampling_seed,
                                           legacy=config.legacy_negatives)
    done = time.perf_counter()
    name = config.dataset_code if not config.data_file else dataset_label(config)
    return PreparedData(sequences, test_negatives, train_negatives, folder, name, raw_folder,
                        {"sequences_s": loaded - start, "negatives_s": done - loaded})
