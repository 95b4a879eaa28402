"""Dataset registry and raw readers: each source turns its raw file into RawInteractions.

Raw files live under ``<local_data_folder>/<code>/`` exactly as the archive unpacks; files placed
there by hand are used as they are. Reading errors become one-line UserErrors naming the file.
"""
from __future__ import annotations

import codecs
import csv
import hashlib
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from esapr.errors import UserError, first_line


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


_REFETCH = "fix the file, or delete it to download it again"   # what to do about a bad registry file
_PLACE = "place it there or let esapr download it"               # ... about a missing one
_USER_FIX = "fix the file or check --data_file"                  # ... about the user's own file


def _fail(path: Path, problem: str, fix: str = _REFETCH) -> UserError:
    return UserError(f"{path}: {problem}; {fix}")


class _BadValue(UserError):
    """A value that does not parse as its column's kind: a reader may retry with a laxer parse
    (its own type, so that retry is keyed on it, not on the message)."""

    def __init__(self, path: Path, column: str, what: str, line: int, value: str, fix: str):
        super().__init__(f"{path}: column '{column}' must be {what}, line {line} has '{value[:40]}'; {fix}")


ID, STR_ID, FLOAT, INT, TEXT, EMPTY, SKIP = "id", "str_id", "float", "int", "text", "empty", "skip"
WHITESPACE = r"\s+"            # as a separator: runs of spaces or tabs (pandas' C parser supports it)
_FAST_DTYPES = {ID: np.int64, STR_ID: str, FLOAT: np.float64, INT: np.int64, TEXT: str, EMPTY: np.float64}
_DIAGNOSE_CHUNK = 200_000


def _check_file(path: Path, fix: str, missing_fix: str) -> None:
    """Refuse, in one line, anything but a readable file with at least one byte."""
    try:
        with open(path, "rb") as handle:
            empty = not handle.read(1)
    except FileNotFoundError:
        raise _fail(path, "file not found", missing_fix) from None
    except IsADirectoryError:
        raise _fail(path, "is a folder, not a file", missing_fix) from None
    except OSError as error:
        raise _fail(path, f"cannot be read ({error.strerror or error})", "check its permissions") from None
    if empty:
        raise _fail(path, "the file is empty", fix)


def _read_table(path: Path, spec: dict[str, str], *, sep: str = ",", header: bool = False,
                fix: str = _REFETCH, missing_fix: str = _PLACE, encoding: str = "utf-8") -> pd.DataFrame:
    """Read a delimited file whose columns are ``spec`` (name -> kind), in order.

    Kinds: ``id`` (integer id), ``str_id`` (id kept as text), ``float``, ``int``, ``text`` (any
    non-empty text), ``empty`` (a separator column that must stay empty, e.g. the gaps of ml-1m's
    ``::``), ``skip`` (not read). The fast path parses with the C engine and explicit dtypes (no
    type inference, no copies); only empty fields count as missing (an id may read "NA"). Anything
    it cannot parse is diagnosed chunk by chunk to a one-line UserError naming line and column
    (a _BadValue when a value does not parse as its kind)."""
    _check_file(path, fix, missing_fix)
    names = list(spec)
    used = [n for n, k in spec.items() if k != SKIP]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)   # extra fields: diagnose
            warnings.simplefilter("error", RuntimeWarning)            # "inf" cast to an integer: diagnose
            frame = pd.read_csv(path, sep=sep, header=0 if header else None, names=names, index_col=False,
                                usecols=used if len(used) < len(names) else None, encoding=encoding,
                                dtype={n: _FAST_DTYPES[k] for n, k in spec.items() if k != SKIP}, engine="c",
                                keep_default_na=False, na_values={n: [""] for n in used},  # "NA" may be an id
                                skip_blank_lines=True)
    except (ValueError, OverflowError, pd.errors.ParserError, pd.errors.ParserWarning, RuntimeWarning,
            UnicodeDecodeError):
        raise _diagnose(path, spec, sep, header, fix, encoding) from None
    if len(frame) == 0:
        raise _fail(path, "the file has no rows" + (" after its header" if header else ""), fix)
    # NaN (an empty field) can only get through in float and text columns
    for name, kind in spec.items():
        if kind in (FLOAT, STR_ID, TEXT) and frame[name].isna().any() or kind == EMPTY and frame[name].notna().any():
            raise _diagnose(path, spec, sep, header, fix, encoding)
    return frame.drop(columns=[n for n, k in spec.items() if k == EMPTY])


def _diagnose(path: Path, spec: dict[str, str], sep: str, header: bool, fix: str, encoding: str) -> UserError:
    """The first problem in the file, as a UserError (chunked, so a big file stays cheap in memory)."""
    names = list(spec)
    shown = [n for n, k in spec.items() if k not in (EMPTY, SKIP)]
    shown_sep = sep * 2 if EMPTY in spec.values() else {"\t": "\\t", WHITESPACE: " "}.get(sep, sep)
    layout = shown_sep.join(shown)
    first_row = 1 + int(header)
    try:
        chunks = pd.read_csv(path, sep=sep, header=0 if header else None, dtype=str, keep_default_na=False,
                             index_col=False, engine="c", skip_blank_lines=True, chunksize=_DIAGNOSE_CHUNK,
                             encoding=encoding)
        for number, chunk in enumerate(chunks):
            base = first_row + number * _DIAGNOSE_CHUNK
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
                    if kind != FLOAT:   # not finite, a fraction, or beyond int64
                        bad = bad | ~(np.abs(number_) < 2.0**63) | (np.nan_to_num(number_) % 1 != 0)
                    if bad.any():
                        line = int(np.argmax(bad))
                        what = ("a number" if kind == FLOAT else
                                "an integer below 2**63" if float(number_[line]).is_integer() else "an integer")
                        return _BadValue(path, name, what, base + line, values.iloc[line], fix)
    except pd.errors.EmptyDataError:
        return _fail(path, "the file is empty", fix)
    except pd.errors.ParserError as error:
        return _fail(path, f"cannot be parsed ({first_line(error)}; expected {layout})", fix)
    except UnicodeDecodeError as error:
        return _fail(path, f"is not UTF-8 text ({first_line(error)})", fix)
    return _fail(path, f"cannot be parsed as {layout}", fix)


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
    _check_file(path, _REFETCH, _PLACE)
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


_HEADER_SEPS = ("\t", ";", ",", WHITESPACE)        # tried in this order on the first line
_INT_TEXT = r"-?(0|[1-9][0-9]{0,17})(\.0*)?"     # an integer id ("3.0": how pandas writes a float column)
_SNIFF_BYTES = 1 << 16
_TABLE_WIDTHS = range(3, 6)       # fields of a headerless table (u.data: 4); as a sequence file: 2-4 items a user
_CONTROL = re.compile(rb"[\x00-\x08\x0e-\x1f\x7f]")   # bytes no text holds (tab, LF, VT, FF, CR may)


def _key(name: str) -> str:
    """A column name as compared: RecBole's ``:type`` suffix, case, spaces and punctuation ignored,
    so ``User ID``, ``userId``, ``user_id`` and ``user_id:token`` all name the user column."""
    return re.sub(r"[^0-9a-z]", "", name.split(":")[0].lower())


def _find(header: list[str], names: tuple[str, ...]) -> int | None:
    keys = [_key(h) for h in header]
    return next((keys.index(_key(n)) for n in names if _key(n) in keys), None)


def read_user_file(path: Path) -> RawInteractions:
    """Your own data: a table with a header naming user and item columns (rating and time optional,
    other columns ignored), comma, semicolon, tab or space separated as spreadsheets, pandas and
    RecBole write it; or a file without header holding one user per line (``user item item ...``;
    SASRec's ``user item`` pairs), file order = time order. Times may be unix seconds or dates;
    numeric ids become integers. Text may be UTF-8 (BOM or not), UTF-16 with a BOM, or Latin-1."""
    _check_file(path, _USER_FIX, _USER_FIX)
    encoding = _text_encoding(path)
    with open(path, encoding=encoding, newline="") as handle:
        first = handle.readline().strip()
    if not first:
        raise _fail(path, "the file starts with a blank line", _USER_FIX)
    header, sep = _split_header(first)
    if sep is not None:
        return _read_user_table(path, header, sep, encoding)
    if _find(header, USER_COLUMNS + ITEM_COLUMNS) is not None or len(first.split()) < 2 or re.search("[,;]", first):
        raise _header_error(path, header)
    return _read_sequence_file(path, encoding)


def _text_encoding(path: Path) -> str:
    """How to decode the file: UTF-16 when it starts with that BOM (a spreadsheet's "Unicode text"),
    UTF-8 (skipping a BOM) when all of it decodes so, else Latin-1 (older spreadsheets). Binary data
    (a workbook, an archive) is refused here rather than misread."""
    with open(path, "rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    if _CONTROL.search(head):
        raise _fail(path, "is not a text file (it holds binary data)",
                    "save it as CSV text (a spreadsheet's Save As > CSV) or unpack it, and pass that file")
    return "utf-8-sig" if _is_utf8(path) else "latin-1"


def _is_utf8(path: Path) -> bool:
    """Whether the whole file decodes as UTF-8 (read in blocks, so memory stays small). A byte no
    text holds deeper in the file (a NUL inside an id) is refused, naming its line: it would be
    read as part of a value."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    utf8, lines = True, 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            control = _CONTROL.search(block)
            if control:
                line = lines + block.count(b"\n", 0, control.start()) + 1
                raise _fail(path, f"line {line} holds the byte {control.group()!r}, which no text holds (a damaged "
                                  f"or binary file)", _USER_FIX)
            lines += block.count(b"\n")
            if utf8:
                try:
                    decoder.decode(block)
                except UnicodeDecodeError:
                    utf8 = False
    try:
        return utf8 and decoder.decode(b"", final=True) == ""
    except UnicodeDecodeError:
        return False


def _split_header(line: str) -> tuple[list[str], str | None]:
    """(fields, separator) of the first line under the first separator that makes it name a user
    and an item column; (its widest split, None) when none does."""
    splits = {sep: line.split() if sep == WHITESPACE else _csv_fields(line, sep) for sep in _HEADER_SEPS}
    for sep, fields in splits.items():
        if _find(fields, USER_COLUMNS) is not None and _find(fields, ITEM_COLUMNS) is not None:
            return fields, sep
    return max(splits.values(), key=len), None


def _csv_fields(line: str, sep: str) -> list[str]:
    """One line's CSV fields; a field longer than the csv module takes (a sequence file's one long
    line of items, say) is no header name: plain splitting is enough to tell."""
    try:
        return next(csv.reader([line], delimiter=sep))
    except csv.Error:
        return line.split(sep)


def _header_error(path: Path, header: list[str]) -> UserError:
    return _fail(path, f"the header {header} must name a user column ({'/'.join(USER_COLUMNS[:4])}) "
                       f"and an item column ({'/'.join(ITEM_COLUMNS[:6])})", "rename the columns")


def _read_user_table(path: Path, header: list[str], sep: str, encoding: str) -> RawInteractions:
    """The named columns of a table with a header (others, e.g. pandas' unnamed index, are skipped).
    Rating and time are parsed as numbers; only a file whose values need more (decimal commas,
    fractional or date times) is read once more with those two columns as text."""
    named = {_find(header, USER_COLUMNS): ("user", STR_ID), _find(header, ITEM_COLUMNS): ("item", STR_ID)}
    for names, label, kind in ((RATING_NAMES, "rating", FLOAT), (TIME_NAMES, "timestamp", INT)):
        col = _find(header, names)
        if col is not None and col not in named:
            named[col] = (label, kind)
    spec = dict(named.get(i, (f"extra{i}", SKIP)) for i in range(len(header)))
    options = dict(sep=sep, header=True, fix=_USER_FIX, missing_fix=_USER_FIX, encoding=encoding)
    try:
        frame = _read_table(path, spec, **options)
    except _BadValue:                       # only rating and timestamp are parsed as numbers
        frame = _read_table(path, {n: TEXT if k in (FLOAT, INT) else k for n, k in spec.items()}, **options)
        if "rating" in frame:
            frame["rating"] = _lax_ratings(path, frame["rating"])
        if "timestamp" in frame:
            frame["timestamp"] = _lax_times(path, frame["timestamp"])
    for name in ("user", "item"):
        frame[name] = _ids(frame[name])
    return _to_raw(frame)


def _decimal(values: pd.Series) -> np.ndarray:
    """Numbers from text, a decimal comma read as a point (spreadsheets in many locales); NaN if none.
    Commas go before parsing: a value pandas fails to parse costs it several times one it parses."""
    if values.str.contains(",", regex=False).any():
        values = values.str.replace(",", ".", regex=False)
    return pd.to_numeric(values, errors="coerce").to_numpy(np.float64, na_value=np.nan)


def _lax_ratings(path: Path, values: pd.Series) -> np.ndarray:
    ratings = _decimal(values)
    bad = np.isnan(ratings)
    if bad.any():
        line = int(np.argmax(bad))
        raise _BadValue(path, "rating", "a number", line + 2, values.iloc[line], _USER_FIX)
    return ratings


def _lax_times(path: Path, values: pd.Series) -> np.ndarray:
    """Unix seconds from numbers (fractions floored) or, when some value is not a number, from dates
    (ISO 8601 and the like; UTC unless they name a zone)."""
    seconds, problem = _decimal(values), "is out of range"
    if np.isnan(seconds).any():
        dates = pd.to_datetime(values, errors="coerce", utc=True, format="mixed")
        since = (dates - pd.Timestamp("1970-01-01", tz="UTC")) // pd.Timedelta(seconds=1)
        seconds, problem = since.to_numpy(np.float64, na_value=np.nan), "is neither a number nor a date"
    bad = ~(np.abs(seconds) < 2.0**63)
    if bad.any():
        line = int(np.argmax(bad))
        raise _fail(path, f"column 'timestamp' line {line + 2} {problem} ('{values.iloc[line][:40]}')", _USER_FIX)
    return np.floor(seconds).astype(np.int64)


def _ids(values: pd.Series) -> np.ndarray:
    """Ids as text without surrounding spaces; all-integer ids (without leading zeros, which would be
    lost) become int64. The text work is done once per distinct id (pandas' string methods run per
    element), then spread back to the rows."""
    rows, distinct = pd.factorize(values)
    text = pd.Series(distinct).astype(str).str.strip()
    if text.iloc[:1000].str.fullmatch(_INT_TEXT).all() and text.str.fullmatch(_INT_TEXT).all():
        text = text.str.replace(r"\.0*$", "", regex=True).astype(np.int64)
    return text.to_numpy()[rows]


def _read_sequence_file(path: Path, encoding: str) -> RawInteractions:
    """One user per line, ``user item item ...`` separated by spaces or tabs (SASRec's ``user item``
    pairs have one item a line); file order is time order. A first line that reads as a header (no
    number in it, only numbers in the next), and a table without one (every line the same 3-5
    fields, like u.data), are refused, not misread."""
    with open(path, encoding=encoding) as handle:
        tokens = pd.Series(handle.read().split("\n")).str.split()
    counts = tokens.str.len().to_numpy()
    numbers = np.flatnonzero(counts) + 1                 # line numbers of the lines that are not blank
    tokens, counts = tokens[counts > 0], counts[counts > 0]
    numeric = [[re.fullmatch(_INT_TEXT, token) is not None for token in line] for line in tokens.iloc[:2]]
    if len(numeric) == 2 and not any(numeric[0]) and all(numeric[1]):
        raise _header_error(path, tokens.iloc[0])
    if (counts < 2).any():
        raise _fail(path, f"line {numbers[np.argmax(counts < 2)]} has a user but no items",
                    "each line must be 'user item item ...'")
    if len(counts) > 1 and counts[0] in _TABLE_WIDTHS and (counts == counts[0]).all():
        raise _fail(path, f"every line has {counts[0]} fields and no header names them, so it may be a table "
                          f"(user item rating timestamp ...) rather than one user per line",
                    "add a header line naming the columns")
    flat = tokens.explode()                              # every token; its index is its line's
    items = flat[flat.index.duplicated()]                # all but the first of each line
    frame = pd.DataFrame({"user": np.repeat(tokens.str[0].to_numpy(), counts - 1), "item": items.to_numpy()})
    for name in ("user", "item"):
        frame[name] = _ids(frame[name])
    return _to_raw(frame)


def _movielens_titles(filename: str, sep: str, encoding: str, header: bool = False):
    def titles(folder: Path) -> dict:
        path = folder / filename
        if not path.is_file():
            return {}
        try:
            frame = pd.read_csv(path, sep=sep, header=0 if header else None, encoding=encoding,
                                usecols=[0, 1], engine="python" if len(sep) > 1 else "c", quotechar='"')
        except (ValueError, UnicodeDecodeError, OSError) as error:   # titles are a courtesy: go on without
            warnings.warn(f"{path}: no titles ({type(error).__name__}: {str(error).strip()[:100]})", stacklevel=2)
            return {}
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
    """Short key for a raw file: changes when its path, size, modification time or status-change
    time does. Every write to a file sets the last to now (a tool that restores the modification
    time cannot restore it), so a file edited in place never matches its old cache."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}|{stat.st_ino}"
    return hashlib.sha1(key.encode(errors="surrogateescape")).hexdigest()[:10]
