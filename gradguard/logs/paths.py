"""What a log path may be: the ``log_file`` argument of every front door, and opening a log.

Logs are regular files. A FIFO opened for appending blocks until a reader appears (a check,
a guard or a whole ``fit`` would hang), and a device (``/dev/zero``, ``/dev/full``) is not a
log. Both the writer and the reader open a path without blocking and refuse anything that is
not a regular file, so neither can hang on what a path turns out to be.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

from gradguard.errors import SettingsError

__all__ = ["NotRegularFileError", "log_file_path", "open_regular"]

# O_NONBLOCK: opening a FIFO must not wait for its other end. Not on Windows, which has none.
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class NotRegularFileError(OSError):
    """The path names a FIFO, a device or a socket, not a regular file."""


def log_file_path(log_file: object) -> str | None:
    """Validate a front door's ``log_file`` argument: ``None``, or a ``str``/``os.PathLike`` path.

    Every front door that takes ``log_file`` calls this at construction, so a wrong type is
    a :class:`~gradguard.SettingsError` there, not a ``TypeError`` in the middle of training.

    Returns:
        The path as a ``str``, or ``None``.

    Raises:
        SettingsError: ``log_file`` is not ``None``, a ``str`` or a ``str`` path-like, or it
            is empty.
    """
    if log_file is None:
        return None
    path = os.fspath(log_file) if isinstance(log_file, str | os.PathLike) else None
    if not isinstance(path, str):
        raise SettingsError(
            f"log_file must be a path (a str or a pathlib.Path) or None, got "
            f"{type(log_file).__name__} {log_file!r:.60}; for example log_file='gradcheck.jsonl'"
        )
    if not path:
        raise SettingsError("log_file is an empty string: give a file name, or None for no log")
    return path


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def open_regular(path: str, *, append: bool = False, allow_stdin: bool = False) -> BinaryIO:
    """Open ``path`` in binary mode without blocking, refusing what is not a regular file.

    Args:
        path: The file.
        append: Open for appending (creating the file), else for reading.
        allow_stdin: Accept a non-regular file when it is this process's standard input
            (``/dev/stdin``, a shell's ``<(...)``): reading a pipe is then what was asked.

    Raises:
        NotRegularFileError: ``path`` is a FIFO, a device, a socket or a directory.
        OSError: it cannot be opened (missing, no permission, ...).
    """
    flags = (os.O_WRONLY | os.O_APPEND | os.O_CREAT) if append else os.O_RDONLY
    try:
        fd = os.open(path, flags | _NONBLOCK | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a FIFO opened for writing with no reader (non-blocking)
            raise NotRegularFileError(f"{path} is a FIFO (named pipe), not a regular file") from exc
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) and not (allow_stdin and _is_stdin(info)):
            raise NotRegularFileError(f"{path} is {_kind(info.st_mode)}, not a regular file")
        if _NONBLOCK:
            os.set_blocking(fd, True)  # reads of a pipe that is stdin wait for its writer
        return os.fdopen(fd, "ab" if append else "rb", buffering=1 << 16)
    except BaseException:
        os.close(fd)
        raise


def _is_stdin(info: os.stat_result) -> bool:
    try:
        return os.path.samestat(info, os.fstat(0))
    except OSError:
        return False
