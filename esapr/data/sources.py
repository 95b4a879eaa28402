"""Dataset registry and raw readers: each source turns its raw file into RawInteractions.

Raw files live under ``<local_data_folder>/<code>/`` exactly as the archive unpacks; files placed
there by hand are used as they are. Reading errors become one-line UserErrors naming the file.
"""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from esapr.errors import UserError


@dataclass
class RawInteractions:
    """One row per interaction, in file order. ``timestamp`` is file order when the file has none."""
    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    rating: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.user)


@dataclass(frozen=True)
class DatasetSource:
    code: str
    url: str
    raw_file: str                     # path of the ratings file inside <local_data_folder>/<code>/
    reader: Callable[[Path], RawInteractions]
    archive: str = "zip"              # "zip": one top folder inside; "file": saved as raw_file
    size: int | None = None           # bytes of the download, where known
    md5: str | None = None            # checksum of the download, where known
    titles: Callable[[Path], dict] | None = None  # folder -> {original item id: title}


def _fail(path: Path, problem: str, fix: str = "check the file or delete it to download it again") -> UserError:
    return UserError(f"{path}: {problem}; {fix}")


def _read_table(path: Path, columns: list[str], required: list[str], *, sep: str = ",", header: bool = False,
                usecols=None, str_ids: bool = False, **kwargs) -> pd.DataFrame:
    """Read a delimited file into named columns, with one-line errors for the usual breakage."""
    if not path.is_file():
        raise _fail(path, "file not found", "place it there or let esapr download it")
    if path.stat().st_size == 0:
        raise _fail(path, "the file is empty")
    dtype = {c: str for c in ("user", "item")} if str_ids else None
    try:
        frame = pd.read_csv(path, sep=sep, header=0 if header else None, names=None if header else columns,
                            usecols=usecols, dtype=dtype, engine="c", skip_blank_lines=True, **kwargs)
    except pd.errors.EmptyDataError:
        raise _fail(path, "the file is empty") from None
    except (pd.errors.ParserError, ValueError, UnicodeDecodeError) as error:
        raise _fail(path, f"cannot be parsed ({str(error).strip().splitlines()[0]})") from None
    if header:
        frame.columns = columns[: len(frame.columns)]
    if len(frame) == 0:
        raise _fail(path, "the file has no rows")
    for name in required:
        if name not in frame.columns or frame[name].isna().all():
            raise _fail(path, f"missing column '{name}' (expected {', '.join(columns)})")
        missing = frame[name].isna().to_numpy()
        if missing.any():
            line = int(np.argmax(missing)) + 1 + int(header)
            raise _fail(path, f"line {line} has no value in column '{name}' (truncated or malformed row)")
    for name in ("rating", "timestamp") if not str_ids else ("timestamp",):
        if name in frame.columns and not pd.api.types.is_numeric_dtype(frame[name]):
            bad = pd.to_numeric(frame[name], errors="coerce").isna().to_numpy()
            line = int(np.argmax(bad)) + 1 + int(header)
            raise _fail(path, f"column '{name}' must be numeric, line {line} has '{frame[name].iloc[line - 1 - int(header)]}'")
    for name in ("user", "item") if not str_ids else ():
        if not pd.api.types.is_integer_dtype(frame[name]):
            raise _fail(path, f"column '{name}' must hold integer ids")
    return frame


def _to_raw(frame: pd.DataFrame) -> RawInteractions:
    rating = frame["rating"].to_numpy(np.float64) if "rating" in frame.columns else None
    timestamp = (frame["timestamp"].to_numpy(np.int64) if "timestamp" in frame.columns
                 else np.arange(len(frame), dtype=np.int64))
    return RawInteractions(frame["user"].to_numpy(), frame["item"].to_numpy(), timestamp, rating)


RATING_COLUMNS = ["user", "item", "rating", "timestamp"]


def read_ml1m(path: Path) -> RawInteractions:
    """ratings.dat: ``user::item::rating::timestamp``; split on ':' so the fast C parser applies."""
    frame = _read_table(path, ["user", "e1", "item", "e2", "rating", "e3", "timestamp"], RATING_COLUMNS, sep=":")
    if frame[["e1", "e2", "e3"]].notna().any().any():
        raise _fail(path, "expected user::item::rating::timestamp on every line")
    return _to_raw(frame)


def read_ml20m(path: Path) -> RawInteractions:
    return _to_raw(_read_table(path, RATING_COLUMNS, RATING_COLUMNS, header=True))


def read_ml100k(path: Path) -> RawInteractions:
    return _to_raw(_read_table(path, RATING_COLUMNS, RATING_COLUMNS, sep="\t"))


def read_amazon(path: Path) -> RawInteractions:
    """SNAP ratings_*.csv: ``user,item,rating,timestamp`` without header, string ids."""
    return _to_raw(_read_table(path, RATING_COLUMNS, RATING_COLUMNS, str_ids=True))


USER_COLUMNS = ("user", "user_id", "userid", "uid", "users", "customer_id", "reviewerid")
ITEM_COLUMNS = ("item", "item_id", "itemid", "movieid", "movie_id", "sid", "iid", "product_id", "asin")
RATING_NAMES = ("rating", "ratings", "score", "stars")
TIME_NAMES = ("timestamp", "time", "ts", "unix_time", "unixreviewtime", "date", "datetime")


def _find(header: list[str], names: tuple[str, ...]) -> int | None:
    lowered = [h.strip().lower() for h in header]
    return next((lowered.index(n) for n in names if n in lowered), None)


def read_user_file(path: Path) -> RawInteractions:
    """Your own data: a CSV/TSV with a header naming user and item columns, or a sequence file
    (``user item item ...`` per line, file order = time order)."""
    if not path.is_file():
        raise UserError(f"{path}: file not found; check --data_file")
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        first = handle.readline()
    if not first.strip():
        raise _fail(path, "the file is empty or starts with a blank line", "check --data_file")
    sep = "\t" if "\t" in first else ";" if ";" in first and "," not in first else ","
    header = next(csv.reader([first.strip()], delimiter=sep))
    user_col, item_col = _find(header, USER_COLUMNS), _find(header, ITEM_COLUMNS)
    if user_col is None or item_col is None:
        if any(h.strip().lower() in USER_COLUMNS + ITEM_COLUMNS for h in header) or sep != "," or len(first.split()) < 2:
            raise _fail(path, f"the header {header} must name a user column ({'/'.join(USER_COLUMNS[:4])}) "
                              f"and an item column ({'/'.join(ITEM_COLUMNS[:6])})", "rename the columns")
        return _read_sequence_file(path)
    named = {user_col: "user", item_col: "item"}
    for names, label in ((RATING_NAMES, "rating"), (TIME_NAMES, "timestamp")):
        col = _find(header, names)
        if col is not None:
            named[col] = label
    columns = [named.get(i, f"extra{i}") for i in range(len(header))]
    frame = _read_table(path, columns, ["user", "item"], sep=sep, header=True, str_ids=True)
    frame = frame[[c for c in columns if not c.startswith("extra")]]
    if "timestamp" in frame.columns and not pd.api.types.is_numeric_dtype(frame["timestamp"]):
        parsed = pd.to_datetime(frame["timestamp"], errors="coerce", utc=True)
        if parsed.isna().any():
            line = int(np.argmax(parsed.isna().to_numpy())) + 2
            raise _fail(path, f"column 'timestamp' line {line} is neither a number nor a date", "fix that row")
        frame["timestamp"] = parsed.astype("int64") // 10**9
    for name in ("user", "item"):
        as_int = pd.to_numeric(frame[name], errors="coerce")
        if as_int.notna().all() and (as_int % 1 == 0).all():
            frame[name] = as_int.astype(np.int64)
    return _to_raw(frame)


def _read_sequence_file(path: Path) -> RawInteractions:
    lines = [line.split() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    if not lines:
        raise _fail(path, "the file is empty", "check --data_file")
    lengths = np.fromiter((len(l) - 1 for l in lines), dtype=np.int64, count=len(lines))
    if (lengths < 1).any():
        raise _fail(path, f"line {int(np.argmax(lengths < 1)) + 1} has a user but no items",
                    "each line must be 'user item item ...'")
    users = np.repeat(np.array([l[0] for l in lines]), lengths)
    items = np.array([tok for l in lines for tok in l[1:]])
    frame = pd.DataFrame({"user": users, "item": items})
    for name in ("user", "item"):
        as_int = pd.to_numeric(frame[name], errors="coerce")
        if as_int.notna().all():
            frame[name] = as_int.astype(np.int64)
    return _to_raw(frame)


def _movielens_titles(filename: str, sep: str, encoding: str, header: bool = False):
    def titles(folder: Path) -> dict:
        path = folder / filename
        if not path.is_file():
            return {}
        frame = pd.read_csv(path, sep=sep, header=0 if header else None, encoding=encoding,
                            usecols=[0, 1], engine="python" if len(sep) > 1 else "c", quotechar='"')
        return dict(zip(frame.iloc[:, 0].tolist(), frame.iloc[:, 1].astype(str).tolist()))
    return titles


GROUPLENS = "https://files.grouplens.org/datasets/movielens/"
SNAP = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"

SOURCES: dict[str, DatasetSource] = {s.code: s for s in [
    DatasetSource("ml-100k", GROUPLENS + "ml-100k.zip", "u.data", read_ml100k,
                  size=4924029, md5="0e33842e24a9c977be4e0107933c0723",
                  titles=_movielens_titles("u.item", "|", "latin-1")),
    DatasetSource("ml-1m", GROUPLENS + "ml-1m.zip", "ratings.dat", read_ml1m,
                  size=5917549, md5="c4d9eecfca2ab87c1945afe126590906",
                  titles=_movielens_titles("movies.dat", "::", "latin-1")),
    DatasetSource("ml-20m", GROUPLENS + "ml-20m.zip", "ratings.csv", read_ml20m,
                  size=198702078, md5="cd245b17a1ae2cc31bb14903e1204af3",
                  titles=_movielens_titles("movies.csv", ",", "utf-8", header=True)),
    DatasetSource("beauty", SNAP + "ratings_Beauty.csv", "ratings.csv", read_amazon, archive="file"),
    DatasetSource("game", SNAP + "ratings_Video_Games.csv", "ratings.csv", read_amazon, archive="file"),
]}


def file_fingerprint(path: Path) -> str:
    """Short key for a user file: changes when the file's path, size or modification time does."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha1(key.encode()).hexdigest()[:10]
