"""Dataset registry and raw readers: each source turns its raw file into RawInteractions.

Raw files live under ``<local_data_folder>/<code>/`` exactly as the archive unpacks; files placed
there by hand are used as they are. Reading errors become one-line UserErrors naming the file.
"""
from __future__ import annotations

import csv
import hashlib
import warnings
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


def _fail(path: Path, problem: str, fix: str = "fix the file, or delete it to download it again") -> UserError:
    return UserError(f"{path}: {problem}; {fix}")


ID, STR_ID, FLOAT, INT, TEXT, EMPTY, SKIP = "id", "str_id", "float", "int", "text", "empty", "skip"
_FAST_DTYPES = {ID: np.int64, STR_ID: str, FLOAT: np.float64, INT: np.int64, TEXT: str, EMPTY: np.float64}
_DIAGNOSE_CHUNK = 200_000


def _check_file(path: Path, fix: str) -> None:
    if not path.is_file():
        raise _fail(path, "file not found", "place it there or let esapr download it"
                    if fix.endswith("download it again") else fix)
    if path.stat().st_size == 0:
        raise _fail(path, "the file is empty", fix)


def _read_table(path: Path, spec: dict[str, str], *, sep: str = ",", header: bool = False,
                fix: str = "fix the file, or delete it to download it again") -> pd.DataFrame:
    """Read a delimited file whose columns are ``spec`` (name -> kind), in order.

    Kinds: ``id`` (integer id), ``str_id`` (id kept as text), ``float``, ``int``, ``text`` (any
    non-empty text), ``empty`` (a separator column that must stay empty, e.g. the gaps of ml-1m's
    ``::``), ``skip`` (not read). The fast path parses with the C engine and explicit dtypes (no
    type inference, no copies); only empty fields count as missing (an id may read "NA"). Anything
    it cannot parse is diagnosed chunk by chunk to a one-line UserError naming line and column."""
    _check_file(path, fix)
    names = list(spec)
    used = [n for n, k in spec.items() if k != SKIP]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)   # extra fields: diagnose
            frame = pd.read_csv(path, sep=sep, header=0 if header else None, names=names, index_col=False,
                                usecols=used if len(used) < len(names) else None,
                                dtype={n: _FAST_DTYPES[k] for n, k in spec.items() if k != SKIP}, engine="c",
                                keep_default_na=False, na_values={n: [""] for n in used},  # "NA" may be an id
                                skip_blank_lines=True)
    except (ValueError, OverflowError, pd.errors.ParserError, pd.errors.ParserWarning, UnicodeDecodeError):
        raise _diagnose(path, spec, sep, header, fix) from None
    if len(frame) == 0:
        raise _fail(path, "the file has no rows" + (" after its header" if header else ""), fix)
    # NaN (an empty field) can only get through in float and text columns
    for name, kind in spec.items():
        if kind in (FLOAT, STR_ID, TEXT) and frame[name].isna().any() or kind == EMPTY and frame[name].notna().any():
            raise _diagnose(path, spec, sep, header, fix)
    return frame.drop(columns=[n for n, k in spec.items() if k == EMPTY])


def _diagnose(path: Path, spec: dict[str, str], sep: str, header: bool, fix: str) -> UserError:
    """The first problem in the file, as a UserError (chunked, so a big file stays cheap in memory)."""
    names = list(spec)
    shown = [n for n, k in spec.items() if k not in (EMPTY, SKIP)]
    layout = (sep * 2).join(shown) if EMPTY in spec.values() else ("\\t" if sep == "\t" else sep).join(shown)
    first_line = 1 + int(header)
    try:
        chunks = pd.read_csv(path, sep=sep, header=0 if header else None, dtype=str, keep_default_na=False,
                             index_col=False, engine="c", skip_blank_lines=True, chunksize=_DIAGNOSE_CHUNK)
        for number, chunk in enumerate(chunks):
            base = first_line + number * _DIAGNOSE_CHUNK
            if chunk.shape[1] != len(names) and EMPTY in spec.values():
                return _fail(path, f"line {base} is not {layout}", fix)
            if chunk.shape[1] < len(names):
                missing = names[chunk.shape[1]:]
                missing = [n for n in missing if spec[n] not in (EMPTY, SKIP)] or missing
                return _fail(path, f"missing column '{missing[0]}' (expected {layout} on every line)", fix)
            if chunk.shape[1] > len(names):
                return _fail(path, f"{chunk.shape[1]} columns, expected {len(names)} ({layout})", fix)
            chunk.columns = names
            for name, kind in spec.items():
                if kind == SKIP:
                    continue
                values = chunk[name].fillna("").str.strip()
                if kind == EMPTY:
                    bad = (values != "").to_numpy()
                    if bad.any():
                        return _fail(path, f"line {base + int(np.argmax(bad))} is not {layout}", fix)
                    continue
                empty = (values == "").to_numpy()
                if empty.any():
                    return _fail(path, f"line {base + int(np.argmax(empty))} has no value in column '{name}' "
                                       f"(truncated or malformed row; expected {layout})", fix)
                if kind in (FLOAT, INT, ID):
                    number_ = pd.to_numeric(values, errors="coerce").to_numpy(np.float64, na_value=np.nan)
                    bad = np.isnan(number_)
                    if kind != FLOAT:
                        bad = bad | ~np.isfinite(number_) | (np.nan_to_num(number_) % 1 != 0)
                    if bad.any():
                        line = int(np.argmax(bad))
                        what = "a number" if kind == FLOAT else "an integer"
                        return _fail(path, f"column '{name}' must be {what}, line {base + line} has "
                                           f"'{values.iloc[line][:40]}'", fix)
    except pd.errors.EmptyDataError:
        return _fail(path, "the file is empty", fix)
    except pd.errors.ParserError as error:
        return _fail(path, f"cannot be parsed ({_first_line(error)}; expected {layout})", fix)
    except UnicodeDecodeError as error:
        return _fail(path, f"is not UTF-8 text ({_first_line(error)})", fix)
    return _fail(path, f"cannot be parsed as {layout}", fix)


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _to_raw(frame: pd.DataFrame) -> RawInteractions:
    rating = frame["rating"].to_numpy(np.float64) if "rating" in frame.columns else None
    timestamp = (frame["timestamp"].to_numpy(np.int64) if "timestamp" in frame.columns
                 else np.arange(len(frame), dtype=np.int64))
    return RawInteractions(frame["user"].to_numpy(), frame["item"].to_numpy(), timestamp, rating)


def _has_header(path: Path, sep: str) -> bool:
    """True when the first line is a header (its first field is not a number)."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        first = handle.readline().split(sep)[0].strip()
    try:
        float(first)
        return False
    except ValueError:
        return True


RATINGS = {"user": ID, "item": ID, "rating": FLOAT, "timestamp": INT}


def read_ml1m(path: Path) -> RawInteractions:
    """ratings.dat: ``user::item::rating::timestamp``; split on ':' so the fast C parser applies
    (the gaps between the colons are empty columns, checked to stay empty)."""
    spec = {"user": ID, "e1": EMPTY, "item": ID, "e2": EMPTY, "rating": FLOAT, "e3": EMPTY, "timestamp": INT}
    return _to_raw(_read_table(path, spec, sep=":"))


def read_ml20m(path: Path) -> RawInteractions:
    """ratings.csv: header ``userId,movieId,rating,timestamp``, half-star float ratings."""
    _check_file(path, "fix the file, or delete it to download it again")
    return _to_raw(_read_table(path, RATINGS, header=_has_header(path, ",")))


def read_ml100k(path: Path) -> RawInteractions:
    """u.data: tab-separated ``user item rating timestamp``, no header."""
    return _to_raw(_read_table(path, RATINGS, sep="\t"))


def read_amazon(path: Path) -> RawInteractions:
    """SNAP ratings_*.csv: ``user,item,rating,timestamp`` without header, string ids."""
    spec = {"user": STR_ID, "item": STR_ID, "rating": FLOAT, "timestamp": INT}
    return _to_raw(_read_table(path, spec))


USER_COLUMNS = ("user", "user_id", "userid", "uid", "users", "customer_id", "reviewerid")
ITEM_COLUMNS = ("item", "item_id", "itemid", "movieid", "movie_id", "sid", "iid", "product_id", "asin")
RATING_NAMES = ("rating", "ratings", "score", "stars")
TIME_NAMES = ("timestamp", "time", "ts", "unix_time", "unixreviewtime", "date", "datetime")


def _find(header: list[str], names: tuple[str, ...]) -> int | None:
    lowered = [h.strip().lower() for h in header]
    return next((lowered.index(n) for n in names if n in lowered), None)


def read_user_file(path: Path) -> RawInteractions:
    """Your own data: a CSV/TSV with a header naming user and item columns (rating and time
    optional; other columns ignored), or a sequence file (``user item item ...`` per line, file
    order = time order). Times may be unix seconds or dates; numeric ids become integers."""
    fix = "fix the file or check --data_file"
    _check_file(path, fix)
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        first = handle.readline()
    if not first.strip():
        raise _fail(path, "the file starts with a blank line", fix)
    sep = "\t" if "\t" in first else ";" if ";" in first and "," not in first else ","
    header = next(csv.reader([first.strip()], delimiter=sep))
    user_col, item_col = _find(header, USER_COLUMNS), _find(header, ITEM_COLUMNS)
    if user_col is None or item_col is None:
        if any(h.strip().lower() in USER_COLUMNS + ITEM_COLUMNS for h in header) or sep != "," or len(first.split()) < 2:
            raise _fail(path, f"the header {header} must name a user column ({'/'.join(USER_COLUMNS[:4])}) "
                              f"and an item column ({'/'.join(ITEM_COLUMNS[:6])})", "rename the columns")
        return _read_sequence_file(path)
    named = {user_col: ("user", STR_ID), item_col: ("item", STR_ID)}
    for names, label, kind in ((RATING_NAMES, "rating", FLOAT), (TIME_NAMES, "timestamp", INT)):
        col = _find(header, names)
        if col is not None and col not in named:
            named[col] = (label, kind)
    spec = dict(named.get(i, (f"extra{i}", SKIP)) for i in range(len(header)))
    try:
        frame = _read_table(path, spec, sep=sep, header=True, fix=fix)
    except UserError:
        if spec.get("timestamp") != INT:
            raise
        spec["timestamp"] = TEXT          # dates, or numbers written as floats
        frame = _read_table(path, spec, sep=sep, header=True, fix=fix)
        parsed = pd.to_numeric(frame["timestamp"], errors="coerce")
        if parsed.notna().all():
            frame["timestamp"] = np.floor(parsed.to_numpy(np.float64)).astype(np.int64)
        else:
            dates = pd.to_datetime(frame["timestamp"], errors="coerce", utc=True, format="mixed")
            if dates.isna().any():
                line = int(np.argmax(dates.isna().to_numpy())) + 2
                raise _fail(path, f"column 'timestamp' line {line} is neither a number nor a date "
                                  f"('{frame['timestamp'].iloc[line - 2][:40]}')", fix) from None
            epoch = pd.Timestamp("1970-01-01", tz="UTC")
            frame["timestamp"] = ((dates - epoch) // pd.Timedelta(seconds=1)).astype(np.int64)
    for name in ("user", "item"):
        frame[name] = _maybe_int(frame[name])
    return _to_raw(frame)


def _maybe_int(values: pd.Series) -> pd.Series:
    """Text ids that are all integers (without leading zeros, which would be lost) become int64."""
    pattern = r"-?(0|[1-9][0-9]{0,17})"
    text = values.astype(str)
    if not text.iloc[:1000].str.fullmatch(pattern).all() or not text.str.fullmatch(pattern).all():
        return values
    return text.astype(np.int64)


def _read_sequence_file(path: Path) -> RawInteractions:
    numbered = [(number, line.split()) for number, line in
                enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1) if line.strip()]
    if not numbered:
        raise _fail(path, "the file is empty", "check --data_file")
    lines = [tokens for _, tokens in numbered]
    lengths = np.fromiter((len(l) - 1 for l in lines), dtype=np.int64, count=len(lines))
    if (lengths < 1).any():
        raise _fail(path, f"line {numbered[int(np.argmax(lengths < 1))][0]} has a user but no items",
                    "each line must be 'user item item ...'")
    users = np.repeat(np.array([l[0] for l in lines]), lengths)
    items = np.array([tok for l in lines for tok in l[1:]])
    frame = pd.DataFrame({"user": users, "item": items})
    for name in ("user", "item"):
        frame[name] = _maybe_int(frame[name])
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
