"""Raw dataset files on disk: use what is there, otherwise download, verify and unpack once.

``ensure_raw(source, local_data_folder, url)`` returns ``<local_data_folder>/<code>/<raw_file>``.

* A ratings file that is already there (downloaded before, or placed by hand) is used as it is,
  without any network access, unless the raw folder also holds a leftover of a broken download:
  a ``*.part`` file or a ``*.zip`` that does not open / fails its CRC check. Then the folder's
  contents are suspect (a truncated archive may have been unpacked by hand) and the download is
  redone; the broken archive is never used.
* A valid archive placed by hand in the raw folder (e.g. ``Data/ml-1m/ml-1m.zip``) is unpacked
  instead of downloading.
* Downloads: http(s) (and file://) through urllib with a tqdm progress bar, Google Drive share
  links through gdown, or a local path given as ``--data_url``. The bytes go to a ``*.part`` file
  in the raw folder; they are checked (complete per Content-Length; size and md5 where the
  registry knows them and the archive is the registry's; a zip must open and pass ``testzip()``)
  before anything is moved into place with ``os.replace``. A truncated download is tried again
  once, then refused.
* Zip sources hold one top folder (``ml-1m/``) whose contents go into ``<code>/``; the ratings
  file is moved last, so its presence means the unpack finished. ``file`` sources are moved to
  ``<code>/<raw_file>``.
* One process at a time downloads or unpacks into a raw folder (it holds the folder's lock);
  another one waits, then uses what the first left, so none removes another's files.

Every failure is a one-line UserError naming the URL or file and what to do.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import socket
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from esapr.data.sources import DatasetSource
from esapr.errors import UserError
from esapr.files import FolderLock

TIMEOUT_S = 60            # seconds without data before a download is abandoned
ATTEMPTS = 2              # a truncated download is tried this many times in all
CHUNK = 1 << 20


def archive_name(source: DatasetSource) -> str:
    """File name of the download (``ml-1m.zip``; ``ratings.csv`` for plain-file sources)."""
    if source.archive == "file":
        return PurePosixPath(source.raw_file).name
    name = PurePosixPath(urlparse(source.url).path).name
    return name if name.endswith(".zip") else f"{source.code}.zip"


def ensure_raw(source: DatasetSource, local_data_folder: Path, url: str | None = None) -> Path:
    """Path of ``<local_data_folder>/<code>/<raw_file>``, downloading and unpacking it if needed.
    One process at a time fetches or unpacks (the raw folder's lock); others wait for it, then use
    what it left (a ready folder is used without the lock, so a read-only one is fine)."""
    folder = Path(local_data_folder) / source.code
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file, but the raw data of {source.code} go into a folder of that name; "
                        f"move it away")
    found = _ready(folder, source)
    if found is not None:
        return found
    lock = FolderLock(folder, "it is downloading or unpacking this dataset")
    lock.acquire(wait=True, on_wait=lambda message: print(f"esapr: {message}", file=sys.stderr))
    try:
        return _ready(folder, source) or _fetch_raw(folder, source, url)
    finally:
        lock.release()      # the folder goes again if only the lock was put there (a failed download)


def _ready(folder: Path, source: DatasetSource) -> Path | None:
    """The ratings file when the raw folder holds it and no broken leftover casts doubt on it."""
    target = folder / source.raw_file
    broken, valid = _inspect_leftovers(folder, source)
    if target.is_file() and not broken:
        return target
    nested = folder / source.code / source.raw_file      # an archive unpacked once more into its own folder
    if not target.exists() and nested.is_file() and not broken and not valid:
        print(f"esapr: using {nested} (found one folder further down than {target})", file=sys.stderr)
        return nested
    return None


def _fetch_raw(folder: Path, source: DatasetSource, url: str | None) -> Path:
    """Unpack an archive placed by hand, or download (and unpack); the caller holds the folder's lock."""
    target = folder / source.raw_file
    broken, valid = _inspect_leftovers(folder, source)
    notes = _describe(broken, target)
    if valid:                               # an archive placed by hand: unpack it, no download
        _unpack(valid[0], source, folder)
    else:
        _download_verified(source, folder, url or source.url, default=(url is None or url == source.url), notes=notes)
    for path in broken:                     # superseded by a good archive: the broken leftovers go
        path.unlink(missing_ok=True)
    if broken:
        print(f"esapr: removed {', '.join(p.name for p in broken)} from {folder} (a broken leftover, not used)",
              file=sys.stderr)
    return target


# ----------------------------------------------------------------------------------------------
# what is already in the raw folder

def _inspect_leftovers(folder: Path, source: DatasetSource) -> tuple[list[Path], list[Path]]:
    """(broken leftovers, valid archives) in the raw folder. ``*.part`` files are always broken."""
    if not folder.is_dir():
        return [], []
    broken, valid = [], []
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        if path.name.endswith(".part"):
            broken.append(path)
        elif path.suffix.lower() == ".zip" and source.archive == "zip":
            try:
                _check_zip(path, source)
            except _ForeignZip:         # a sound zip of something else is left alone
                continue
            except _BrokenZip:
                broken.append(path)
            else:
                valid.append(path)
    return broken, valid


def _describe(broken: list[Path], target: Path) -> str:
    if not broken:
        return ""
    names = ", ".join(str(p) for p in broken)
    kind = "an interrupted download" if all(p.name.endswith(".part") for p in broken) else \
        "a truncated or corrupt archive"
    extra = f", so the existing {target.name} is not trusted either (delete the leftover to use it)" \
        if target.is_file() else ""
    return f"{names} is {kind} and was not used{extra}."


class _BrokenZip(Exception):
    """The archive is damaged: a member fails its CRC check or does not decompress."""


class _NotAZip(_BrokenZip):
    """The file does not open as a zip: cut short, or not an archive at all (a new download may help)."""


class _ForeignZip(Exception):
    """A sound zip that does not hold the ratings file: some other archive."""


def _check_zip(path: Path, source: DatasetSource) -> None:
    """Return when the archive opens, passes its CRC check and holds the ratings file; otherwise raise
    _NotAZip, _BrokenZip or _ForeignZip saying why."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            names = archive.namelist()
    except zlib.error as error:
        raise _BrokenZip(f"a member does not decompress ({error})") from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as error:
        raise _NotAZip(f"it does not open as a zip ({str(error).strip() or type(error).__name__})") from None
    if bad is not None:
        raise _BrokenZip(f"member {bad} fails its CRC check")
    if _member_prefix(names, source.raw_file) is None:
        raise _ForeignZip(f"it holds no {source.raw_file}")


def _member_prefix(names: list[str], raw_file: str) -> str | None:
    """The folder inside the archive whose contents form the raw folder: the single top folder
    (``ml-1m/``), or the root for a flat archive; None if the ratings file is not there."""
    tops = {name.split("/", 1)[0] for name in names if name.strip("/")}
    candidates = [f"{next(iter(tops))}/"] if len(tops) == 1 else []
    candidates.append("")
    for prefix in candidates:
        if prefix + raw_file in names:
            return prefix
    return None


# ----------------------------------------------------------------------------------------------
# download

def _fail(url: str, reason: str, target: Path, notes: str = "") -> UserError:
    reason = " ".join(str(reason).split()).rstrip(".") or "unknown error"
    prefix = f"{notes} " if notes else ""
    return UserError(f"{prefix}cannot download {url}: {reason}; pass --data_url MIRROR (an http(s) or Google "
                     f"Drive link to the same file) or place the file by hand at {target.absolute()}")


def _download_verified(source: DatasetSource, folder: Path, url: str, default: bool, notes: str) -> None:
    target = folder / source.raw_file
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create {folder}: {error.strerror or error}; check --local_data_folder") from None
    part = folder / f"{archive_name(source)}.{os.getpid()}.part"
    try:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                got, md5 = _fetch(url, part)
                _verify(source, part, got, md5, default)
                break
            except _FetchError as error:
                raise _fail(url, str(error), target, notes) from None
            except _Truncated as error:
                if attempt == ATTEMPTS:
                    tried = f" (tried {attempt} times)" if attempt > 1 else ""
                    raise _fail(url, f"{error}{tried}", target, notes) from None
                print(f"esapr: {url}: {error}; trying again", file=sys.stderr)
        if source.archive == "zip":
            _unpack(part, source, folder)
        else:
            os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)


class _FetchError(Exception):
    """The download failed in a way that trying again at once will not fix."""


class _Truncated(Exception):
    """The download stopped early, or came out empty or not a zip; trying again may help."""


def _fetch(url: str, part: Path) -> tuple[int, str]:
    """Download ``url`` into ``part``: (bytes written, md5 hex). Raises _FetchError or _Truncated."""
    parsed = urlparse(url)
    host = parsed.netloc.lower()
    if host.endswith("drive.google.com") or host.endswith("docs.google.com"):
        return _fetch_gdrive(url, part)
    if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and url[1:2] == ":"):  # a local path
        return _copy_local(Path(parsed.path if parsed.scheme == "file" else url), part)
    if parsed.scheme not in ("http", "https"):
        raise _FetchError(f"unsupported URL scheme '{parsed.scheme}' (use http(s), a Google Drive link or a path)")
    request = urllib.request.Request(url, headers={"User-Agent": "esapr (python urllib)"})
    digest = hashlib.md5()
    got = 0
    expected = None
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.strip().isdigit() else None
            with open(part, "wb") as out, _progress(expected, PurePosixPath(parsed.path).name or url) as bar:
                while True:
                    try:
                        chunk = response.read(CHUNK)
                    except http.client.IncompleteRead as error:
                        got += len(error.partial)
                        raise _Truncated(f"the download stopped after {got} of {expected} bytes") from None
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
    except (_Truncated, UserError):
        raise
    except urllib.error.HTTPError as error:
        raise _FetchError(f"HTTP error {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise _FetchError(_reason(error.reason)) from None
    except (TimeoutError, socket.timeout, ConnectionError, http.client.HTTPException) as error:
        if got:   # the connection broke or stalled mid-way: a truncated download
            raise _Truncated(f"the download stopped after {got} bytes ({_reason(error)})") from None
        raise _FetchError(_reason(error)) from None
    except OSError as error:
        if error.filename is not None or error.errno == 28:  # writing failed (e.g. disk full)
            raise UserError(f"cannot write {part}: {error.strerror or error}; free some space or change "
                            f"--local_data_folder") from None
        raise _FetchError(_reason(error)) from None
    if expected is not None and got != expected:
        raise _Truncated(f"the download stopped after {got} of {expected} bytes")
    return got, digest.hexdigest()


def _reason(error) -> str:
    if isinstance(error, (TimeoutError, socket.timeout)):
        return f"timed out (no data for {TIMEOUT_S} s)"
    return " ".join(str(error).split()) or type(error).__name__


def _progress(total: int | None, name: str):
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"downloading {name}",
                file=sys.stderr, mininterval=0.5, leave=False)


def _fetch_gdrive(url: str, part: Path) -> tuple[int, str]:
    try:
        import gdown
    except ImportError:
        raise _FetchError("Google Drive links need the gdown package (pip install gdown)") from None
    try:
        result = gdown.download(url, str(part), quiet=False, fuzzy=True)
    except Exception as error:  # gdown raises many kinds (requests errors, its FileURLRetrievalError)
        text = str(error).strip().splitlines()
        raise _FetchError(f"Google Drive: {text[0] if text else type(error).__name__}") from None
    if result is None or not part.is_file():
        raise _FetchError("Google Drive returned no file (is the link shared with 'anyone with the link'?)")
    return part.stat().st_size, _md5_of(part)


def _copy_local(path: Path, part: Path) -> tuple[int, str]:
    path = path.expanduser()
    if not path.is_file():
        raise _FetchError("no such file")
    try:
        shutil.copyfile(path, part)
    except OSError as error:
        raise UserError(f"cannot copy {path} to {part}: {error.strerror or error}") from None
    return part.stat().st_size, _md5_of(part)


def _md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(source: DatasetSource, part: Path, got: int, md5: str, default: bool) -> None:
    """Return if the download is good; otherwise raise _Truncated (a retry may help) or _FetchError.

    The registry's size and md5 describe the registry's archive: they are applied to the default URL,
    and to a mirror that serves a file of exactly that size (the same archive). A mirror serving a
    different file (e.g. a re-packed zip) is checked as a zip only."""
    if got == 0:
        raise _Truncated("the server sent an empty file")
    same_archive = default or (source.size is not None and got == source.size)
    if same_archive and source.size is not None and got != source.size:
        raise (_Truncated if got < source.size else _FetchError)(f"got {got} bytes, expected {source.size}")
    if same_archive and source.md5 is not None and md5 != source.md5:
        raise _FetchError(f"md5 {md5} differs from the expected {source.md5} (a damaged download, or the server "
                          f"serves a different file)")
    if source.archive == "zip":
        try:
            _check_zip(part, source)
        except _NotAZip as error:
            raise _Truncated(f"the downloaded archive is unusable: {error}") from None
        except (_BrokenZip, _ForeignZip) as error:
            raise _FetchError(f"the downloaded archive is unusable: {error}") from None


# ----------------------------------------------------------------------------------------------
# unpack

def _unpack(archive_path: Path, source: DatasetSource, folder: Path) -> None:
    """Extract the archive's top folder into ``folder``; the ratings file is moved in last."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".unpack-*"):        # left by an unpack that was killed (the lock is ours)
        shutil.rmtree(stale, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix=".unpack-", dir=folder))
    try:
        with zipfile.ZipFile(archive_path) as archive:
            prefix = _member_prefix(archive.namelist(), source.raw_file)
            if prefix is None:
                raise UserError(f"{archive_path}: the archive holds no {source.raw_file}; it is not the "
                                f"{source.code} archive")
            archive.extractall(scratch)   # zipfile drops absolute paths and '..' components
        root = scratch / prefix if prefix else scratch
        files = [p for p in root.rglob("*") if p.is_file()]
        ratings = root / source.raw_file
        for path in sorted(files, key=lambda p: p == ratings):
            destination = folder / path.relative_to(root)
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, destination)
    except zipfile.BadZipFile as error:
        raise UserError(f"{archive_path}: cannot unpack ({error}); delete it to download it again") from None
    except OSError as error:
        raise UserError(f"cannot unpack {archive_path} into {folder}: {error.strerror or error}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
