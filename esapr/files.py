"""Safe writes and one writer per folder.

Every file the package writes goes through ``atomic_write``: a uniquely named temporary file
beside the target, renamed into place, so a kill or a full disk never leaves a half-written
file under the real name and two processes never share a temporary file. ``FolderLock`` is an
OS file lock (released by the OS when its process dies, so there are no stale locks to guess
about); on file systems without locks (some FUSE mounts) it warns once and goes on, which is
still safe for the data because every write is atomic.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

from esapr.errors import UserError

_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
# the process's umask (read once, before any thread): files are created as open() would create them
_UMASK = os.umask(0)
os.umask(_UMASK)
TEMPORARY = ".*.tmp"      # the names atomic_write gives its temporary files
# where Colab mounts Google Drive: a slow FUSE folder, where writes are fewer and larger
DRIVE_MOUNTPOINT = "/content/drive"


def on_drive(path: Path) -> bool:
    """Whether ``path`` lies on the Google Drive mount."""
    path = Path(path).resolve()
    return Path(DRIVE_MOUNTPOINT) in (path, *path.parents)


def atomic_write(path: Path, write: Callable) -> None:
    """``write(binary file)`` into a unique temporary file beside ``path``, then rename it there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, 0o666 & ~_UMASK)      # mkstemp makes files private (0600)
        with os.fdopen(handle, "wb") as stream:
            write(stream)
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        if error.filename is None:           # a failed write names no file; say which
            error.filename = str(path)
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda stream: stream.write(text.encode(errors="surrogateescape")))


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet (innermost first)."""
    folder = Path(folder)
    return [p for p in (folder, *folder.parents) if not p.exists()]


def remove_empty(folders: list[Path]) -> None:
    """Remove the folders of ``missing_folders`` again where they stayed empty (innermost first)."""
    for folder in folders:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def remove_leftovers(folder: Path) -> None:
    """Delete the temporary files that killed writers left in ``folder`` (the caller holds its lock)."""
    for leftover in Path(folder).glob(TEMPORARY):
        if leftover.is_file() and not leftover.is_symlink():
            leftover.unlink(missing_ok=True)


def refuse_links(*paths: Path) -> None:
    """esapr writes only where it was told: a symbolic link planted in its folders is refused."""
    for path in paths:
        if Path(path).is_symlink():
            raise UserError(f"{path} is a symbolic link; esapr does not write through links: replace it with a "
                            f"real folder or file, or choose another name")


def lock_holder(folder: Path) -> str | None:
    """Who holds ``folder``'s lock ("pid 12, since ..."), or None when no live process does. A
    probe that creates nothing: ``esapr compare`` waits for a run another process is training,
    and tells a run whose process died from one still going."""
    try:
        fd = os.open(Path(folder) / ".lock", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None         # no lock file (or a link, refused where it is written): nobody holds it
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return FolderLock._holder(fd)
    except OSError:
        return None         # a file system without locks
    finally:
        os.close(fd)        # closing drops the probe's shared lock
    return None


class FolderLock:
    """An exclusive lock on ``folder`` (the file ``folder/.lock`` holds the owner's pid). Folders
    made only to hold the lock are removed again on release if nothing else was put there, so a
    run that fails early leaves nothing behind."""

    def __init__(self, folder: Path, what: str):
        self.folder = Path(folder)
        self.path = self.folder / ".lock"
        self.what = what
        self._fd: int | None = None
        self._made: list[Path] = []

    def acquire(self, wait: bool = False, on_wait: Callable[[str], None] | None = None) -> None:
        """Take the lock; if another process has it, raise a UserError naming it, or (``wait``)
        call ``on_wait(message)`` and block until it is free. The lock is recorded the moment it
        is held, so ``release`` drops it whatever interrupts this (Ctrl-C included)."""
        while self._fd is None:
            self._made = missing_folders(self.folder)
            self.folder.mkdir(parents=True, exist_ok=True)
            refuse_links(self.path)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
            try:
                self._lock(fd, wait, on_wait)
                if self._names(fd):     # else its holder removed the file on release: lock the new one
                    self._fd = fd
            finally:
                if self._fd != fd:
                    os.close(fd)
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()} {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())

    def _lock(self, fd: int, wait: bool, on_wait: Callable[[str], None] | None) -> None:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UserError(f"{self.path}: not a regular file (a pipe, socket or device has its name); remove it "
                            f"and run the command again")
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                message = f"{self.folder} is in use by another esapr process ({self._holder(fd)})"
                if not wait:
                    raise UserError(f"{message}: {self.what}; wait for it to finish or stop it") from None
                if on_wait is not None:
                    on_wait(f"{message}; waiting for it")
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as error:
            if error.errno not in _NO_LOCKS:
                raise
            warnings.warn(f"{self.folder}: this file system has no file locks; make sure only one esapr process "
                          f"writes there at a time", stacklevel=3)

    def _names(self, fd: int) -> bool:
        """Whether the lock file's name still leads to ``fd``'s file."""
        try:
            return os.path.samestat(os.fstat(fd), os.stat(self.path, follow_symlinks=False))
        except FileNotFoundError:
            return False

    def release(self) -> None:
        """Drop the lock if this object holds it (else, or called again, do nothing). Folders made
        only to hold it go while it is still held, so no waiting process locks a removed file."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self._made and [p.name for p in self.folder.iterdir()] == [self.path.name]:
                self.path.unlink(missing_ok=True)
                remove_empty(self._made)
        finally:
            os.close(fd)    # closing drops the lock

    @staticmethod
    def _holder(fd: int) -> str:
        text = os.pread(fd, 200, 0).decode(errors="replace").split()
        return f"pid {text[0]}, since {' '.join(text[1:3])}" if len(text) >= 3 else "one that is just starting"

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
