"""Every writer replaces only regular files: folders, links, FIFOs, sockets and devices are refused.

The check lives in ``convarith._atomic`` (used by every writer), so each
command inherits it; here the library functions and the commands that write
pictures, pages and summaries are run against each kind of destination, with
and without ``--force``, and the destination is checked untouched.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from convarith._atomic import (
    NotARegularFileError,
    atomic_path,
    check_writable,
    file_kind,
    write_atomic,
)
from convarith.cli import main

pytestmark = pytest.mark.skipif(os.name != "posix", reason="FIFOs, sockets and device nodes are POSIX")


def _fifo(path: Path) -> Iterator[Path]:
    os.mkfifo(path)
    yield path


def _socket(path: Path) -> Iterator[Path]:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(path))
    except OSError as error:  # path too long for AF_UNIX on some systems
        pytest.skip(f"cannot bind a socket at {path}: {error}")
    try:
        yield path
    finally:
        server.close()


def _link_to_file(path: Path) -> Iterator[Path]:
    (path.parent / "real.gif").write_bytes(b"keep me")
    os.symlink(path.parent / "real.gif", path)
    yield path


def _link_to_device(path: Path) -> Iterator[Path]:
    os.symlink("/dev/null", path)
    yield path


def _dangling_link(path: Path) -> Iterator[Path]:
    os.symlink(path.parent / "missing.gif", path)
    yield path


def _folder(path: Path) -> Iterator[Path]:
    path.mkdir()
    yield path


KINDS: dict[str, tuple[Callable[[Path], Iterator[Path]], str]] = {
    "fifo": (_fifo, "FIFO"),
    "socket": (_socket, "socket"),
    "link-to-file": (_link_to_file, "symbolic link"),
    "link-to-device": (_link_to_device, "symbolic link"),
    "dangling-link": (_dangling_link, "symbolic link"),
    "folder": (_folder, "folder"),
}


def _snapshot(path: Path) -> tuple[int, int, bytes | None]:
    info = os.lstat(path)
    content = (path.parent / "real.gif").read_bytes() if (path.parent / "real.gif").exists() else None
    return info.st_mode, info.st_ino, content


WRITERS: dict[str, Callable[[Path], object]] = {
    "write_atomic": lambda p: write_atomic(p, b"data", force=True),
    "atomic_path": lambda p: atomic_path(p, force=True).__enter__(),
    "check_writable": lambda p: check_writable(p, force=True),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_library_writers_refuse(kind: str, writer: str, tmp_path: Path) -> None:
    make, word = KINDS[kind]
    for target in make(tmp_path / "out.gif"):
        before = _snapshot(target)
        with pytest.raises(OSError, match=word):
            WRITERS[writer](target)
        assert _snapshot(target) == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


COMMANDS: dict[str, Callable[[Path], list[str]]] = {
    "animate-gif": lambda p: ["animate", "4", "-k", "3", "-o", str(p)],
    "animate-png": lambda p: ["animate", "4", "-k", "3", "--step", "0", "-o", str(p.with_suffix(".png"))],
    "animate-svg": lambda p: ["animate", "4", "-k", "3", "-o", str(p.with_suffix(".svg"))],
}


@pytest.mark.parametrize("force", [True, False], ids=["force", "no-force"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("kind", ["fifo", "link-to-device", "folder"])
def test_commands_refuse_with_one_line(kind: str, command: str, force: bool, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("PIL")
    argv = COMMANDS[command](tmp_path / "out.gif")
    make, word = KINDS[kind]
    for target in make(Path(argv[-1])):
        before = _snapshot(target)
        status = main([*argv, *(["--force"] if force else [])])
        message = capsys.readouterr().err
        assert status == 2
        assert word in message and "Traceback" not in message
        assert len(message.strip().splitlines()) == 1
        assert _snapshot(target) == before


def test_character_device_is_refused_even_with_force() -> None:
    if not os.path.exists("/dev/null") or not stat.S_ISCHR(os.lstat("/dev/null").st_mode):
        pytest.skip("no /dev/null character device here")
    assert file_kind("/dev/null") == "a character device"
    with pytest.raises(NotARegularFileError, match="character device"):
        check_writable("/dev/null", force=True)
    with pytest.raises(NotARegularFileError, match="character device"):
        write_atomic("/dev/null", b"x", force=True)


def test_regular_files_are_still_replaced_with_force(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(FileExistsError, match="--force"):
        write_atomic(target, b"new")
    write_atomic(target, b"new", force=True)
    assert target.read_bytes() == b"new" and file_kind(target) == "a regular file"


def test_a_fifo_appearing_during_the_write_is_not_replaced(tmp_path: Path) -> None:
    target = tmp_path / "late.bin"
    with pytest.raises(NotARegularFileError, match="FIFO"):
        with atomic_path(target, force=True) as temporary:
            temporary.write_bytes(b"data")
            os.mkfifo(target)
    assert stat.S_ISFIFO(os.lstat(target).st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["late.bin"]
