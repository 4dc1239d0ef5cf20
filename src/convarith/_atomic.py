"""Write files atomically: all of it or nothing, and no silent overwrite.

The data goes to a temporary file in the destination's folder, is flushed to
disk, then renamed over the destination with :func:`os.replace` (atomic on
POSIX and Windows). After an error or Ctrl-C only the temporary file is
removed; the destination is either untouched or complete.

Only a regular file is ever replaced, even with ``force``: a folder, a
symbolic link, a FIFO, a socket or a device node at the destination is
refused with :class:`NotARegularFileError` before anything is written (so
``--force`` as root cannot write a picture over ``/dev/...``). The check is
made again just before the rename.

Examples
--------
>>> import tempfile, os
>>> folder = tempfile.mkdtemp()
>>> path = write_atomic(os.path.join(folder, "a.txt"), b"hello")
>>> open(path, "rb").read()
b'hello'
>>> write_atomic(path, b"again")
Traceback (most recent call last):
...
FileExistsError: ... exists; pass force=True (--force) to overwrite it
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

__all__ = ["write_atomic", "atomic_path", "check_writable", "NotARegularFileError", "file_kind"]


class NotARegularFileError(FileExistsError):
    """The destination exists and is not a regular file (never replaced, even with ``force``)."""


def file_kind(path: str | os.PathLike[str]) -> str | None:
    """What is at ``path`` without following a symbolic link: ``None`` when nothing.

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> file_kind(folder), file_kind(folder + "/absent")
    ('a folder', None)
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    for test, name in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"  # pragma: no cover - door, port, whiteout...


def _refuse_special(target: Path) -> bool:
    """Whether ``target`` exists (a regular file); raise if it exists and is anything else."""
    kind = file_kind(target)
    if kind is None:
        return False
    if kind == "a folder":
        raise IsADirectoryError(f"{str(target)!r} is a folder; give a file name")
    if kind != "a regular file":
        raise NotARegularFileError(
            f"{str(target)!r} is {kind}, not a regular file; only regular files are "
            "replaced, even with --force: give another file name"
        )
    return True


def check_writable(path: str | os.PathLike[str], force: bool = False) -> Path:
    """The destination as a :class:`Path`, after checking it may be written.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``force`` is false.
    IsADirectoryError
        ``path`` is a folder.
    NotARegularFileError
        ``path`` is a symbolic link, FIFO, socket or device node (whatever ``force``).
    FileNotFoundError
        the folder that would hold ``path`` does not exist.

    >>> import os, tempfile
    >>> link = os.path.join(tempfile.mkdtemp(), "link.gif")
    >>> os.symlink("/dev/null", link)
    >>> check_writable(link, force=True)
    Traceback (most recent call last):
    ...
    convarith._atomic.NotARegularFileError: '...link.gif' is a symbolic link, not a regular file; ...
    """
    target = Path(path)
    if _refuse_special(target) and not force:
        raise FileExistsError(f"{str(target)!r} exists; pass force=True (--force) to overwrite it")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"folder {str(parent)!r} for {str(target)!r} does not exist")
    return target


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    Use it for writers that want a file name (Pillow, ``zipfile``...). If the
    block raises (or is interrupted) the temporary file is deleted and
    ``path`` is left as it was.

    >>> import tempfile, os
    >>> target = os.path.join(tempfile.mkdtemp(), "b.bin")
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_bytes(b"xyz")
    >>> open(target, "rb").read()
    b'xyz'
    """
    target = check_writable(path, force)
    folder = target.parent if str(target.parent) else Path(".")
    # the temporary file's name is known before the file exists, so an interrupt at
    # any moment (even inside the call that creates it) leaves nothing behind
    ours: Path | None = None
    try:
        while True:
            temporary = folder / f".{target.name}.{secrets.token_hex(8)}.part"
            ours = temporary
            try:
                os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                ours = None  # another writer's: try another name
                continue
            break
        yield temporary
        with open(temporary, "rb") as stream:
            os.fsync(stream.fileno())
        if _refuse_special(target) and not force:
            raise FileExistsError(
                f"{str(target)!r} appeared while it was being written; pass force=True to overwrite it"
            )
        os.replace(temporary, target)
    except BaseException:
        if ours is not None:
            with contextlib.suppress(OSError):
                ours.unlink()
        raise
    _match_umask(target)


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes | str | Callable[[IO[bytes]], object],
    force: bool = False,
) -> Path:
    """Write ``data`` (bytes, text as UTF-8, or a function given the open binary file) to ``path``.

    Returns the path written. Raises :class:`FileExistsError` if it exists
    and ``force`` is false.
    """
    if not isinstance(data, (bytes, bytearray, str)) and not callable(data):
        raise TypeError(f"data must be bytes, str or a callable taking a file, got {type(data).__name__}")
    with atomic_path(path, force) as temporary:
        with open(temporary, "wb") as stream:
            if isinstance(data, str):
                stream.write(data.encode("utf-8"))
            elif isinstance(data, (bytes, bytearray)):
                stream.write(data)
            else:
                data(stream)
    return Path(path)


def _match_umask(path: Path) -> None:
    """mkstemp creates files 0600; give the result the usual umask-based mode."""
    umask = os.umask(0)
    os.umask(umask)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o666 & ~umask)
