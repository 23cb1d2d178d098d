"""Atomic file writes: a reader sees the old file or the new one, never a torn one."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from unet3d_base.errors import InputError, OutputError

# the write failures that say "the storage", not the program: full disk, quota, file size, I/O
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS})


def _flock(path: Path, mode: int, folder, what: str):
    """Opens ``path`` and takes its ``flock`` in ``mode`` without waiting; the open handle.

    Raises:
        InputError: another process holds it; the message names the holder.
    """
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise InputError(f"{what} {folder}: in use by {holder} (lock file {path}); wait for "
                         "it to finish or choose another folder") from None
    return handle


@contextlib.contextmanager
def exclusive_lock(folder: str | Path, what: str, name: str = ".lock") -> Iterator[Path]:
    """Holds ``<folder>/.lock`` (``flock``) so that one process at a time writes ``folder``.

    The file names its holder (process id and host). The kernel drops the
    lock when its process dies, however it dies, so a lock left by a killed
    process is simply taken over. A second process is refused at once.

    Args:
        folder: the folder written.
        what: the option that named it, for the message.
        name: str, default ".lock". The lock file's name in ``folder``.

    Raises:
        InputError: another process holds it; the message names the holder.
    """
    path = Path(folder) / name
    handle = _flock(path, fcntl.LOCK_EX, folder, what)  # held until the block ends
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
        handle.close()  # releases the lock


@contextlib.contextmanager
def shared_lock(folder: str | Path, what: str) -> Iterator[Path]:
    """Holds ``<folder>/.lock`` shared: any number of processes that share a folder's work
    among themselves (each writing files no other one writes) hold it together, while
    :func:`exclusive_lock` on the same folder is refused, and refuses them.

    Raises:
        InputError: a process holds the folder exclusively; the message names it.
    """
    path = Path(folder) / ".lock"
    handle = _flock(path, fcntl.LOCK_SH, folder, what)
    try:
        yield path
    finally:
        handle.close()  # the file stays: other holders may still hold it


@contextlib.contextmanager
def atomic_path(path: str | Path, backup: str | Path | None = None) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; renames it over ``path`` on success.

    The temporary name keeps the final suffixes (``.nii.gz``, ``.keras``) so
    libraries that dispatch on the extension still work. The file gets the
    permissions a plain ``open`` would give (``0o666`` less the umask), or
    those of the file it replaces, not ``mkstemp``'s owner-only ``0o600``. On
    error the temporary file is removed and ``path`` is left untouched.

    Args:
        path: the file to write.
        backup: optional. The file ``path`` held is first renamed to this name
            (a checkpoint keeps its predecessor), so a kill between the two
            renames leaves the backup and no ``path``, never a torn file.

    Raises:
        OutputError: the storage refused the write (disk full, quota, I/O
            error); it names ``path``, which is unchanged, and no temporary
            file is left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f"{TEMP_MARK}{suffix}",
                                   dir=path.parent)
    except OSError as err:
        raise _output_error(path, err) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp_path, _mode_for(path))
        if backup is not None and path.exists():
            os.replace(path, backup)
        os.replace(tmp_path, path)
    except OSError as err:
        if err.errno not in STORAGE_ERRNOS:
            raise
        raise _output_error(path, err) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


TEMP_MARK = ".tmp"  # temporary files are ``.<name>.<random>.tmp<suffixes>``


def _output_error(path: Path, err: OSError) -> OutputError:
    reason = err.strerror or os.strerror(err.errno or 0)
    kept = "the previous file is unchanged" if path.exists() else "nothing was written"
    return OutputError(f"{path}: cannot be written ({reason}); {kept}", err.errno)


def storage_error(err: OSError, what: str | Path) -> OutputError | None:
    """``err`` as an :class:`OutputError` naming ``what`` if the storage refused a write,
    else None (the error is the program's, and should be raised as it is)."""
    if err.errno not in STORAGE_ERRNOS:
        return None
    return OutputError(f"{what}: cannot be written ({err.strerror or os.strerror(err.errno)})",
                       err.errno)


def remove_stale_temporaries(folder: str | Path, names=None) -> list[Path]:
    """Removes the temporary files :func:`atomic_path` left in ``folder`` when its process
    was killed. Call it only while holding ``folder``'s :func:`exclusive_lock` (no other
    writer can own them then), or with ``names``, the files whose writes only this process
    makes (then only their temporaries go). Returns what was removed."""
    removed = []
    prefixes = None if names is None else tuple(f".{name}." for name in names)
    for candidate in Path(folder).glob(f".*{TEMP_MARK}*"):
        if prefixes is not None and not candidate.name.startswith(prefixes):
            continue
        if candidate.is_file() and not candidate.name.endswith(".lock"):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def _mode_for(path: Path) -> int:
    """The existing file's permission bits, else ``0o666`` less the process umask."""
    if path.exists():
        return stat.S_IMODE(path.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def ensure_writable_dir(path: str | Path, option: str = "--out") -> Path:
    """Creates folder ``path`` if needed and checks a file can be written in it.

    Raises:
        InputError: naming ``option`` and ``path`` when it cannot be used.
    """

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise InputError(f"{option} {path}: cannot write there ({err.strerror})") from None
    return path


def atomic_write_text(path: str | Path, text: str) -> None:
    """Writes ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
