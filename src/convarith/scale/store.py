"""Reading inputs lazily and writing results chunk by chunk, resumably.

Inputs are memory-mapped ``.npy`` files or Zarr arrays, opened as Dask arrays
whose tasks reopen the file by path (so a graph ships to other processes
without copying the data). Outputs go to a Zarr array whose chunks are the
output blocks: each block is written by one task, then a marker file named
after the block is created under ``<store>/convarith-done/``. A run that is
interrupted leaves every marked block complete (Zarr writes each chunk file
atomically); a rerun with ``resume=True`` skips them. When every block is
written the markers are removed and ``attrs["convarith"]["complete"]`` is set.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "NpyReader",
    "open_input",
    "prepare_output",
    "pending_blocks",
    "write_block",
    "write_block_task",
    "finish_output",
    "fingerprint",
    "check_separate",
    "check_convolvable",
    "MARKER_FOLDER",
]

MARKER_FOLDER = "convarith-done"
_ATTRS_KEY = "convarith"


@dataclass(frozen=True)
class NpyReader:
    """Array-like view of a ``.npy`` file that memory-maps it on each read.

    Pickles as its path, so a Dask graph built on it stays small.

    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.npy")
    >>> np.save(path, np.arange(6.0).reshape(2, 3))
    >>> reader = NpyReader.open(path)
    >>> reader.shape, reader[1, 1:]
    ((2, 3), array([4., 5.]))
    """

    path: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> NpyReader:
        mapped = np.load(os.fspath(path), mmap_mode="r")
        return cls(os.path.abspath(os.fspath(path)), tuple(mapped.shape), mapped.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        return np.array(np.load(self.path, mmap_mode="r")[index])


def open_input(path: str | os.PathLike[str], chunks: Any = None, component: str | None = None) -> Any:
    """A Dask array over a ``.npy`` file (memory-mapped) or a Zarr array.

    Parameters
    ----------
    path
        ``*.npy`` file, or a Zarr store (an array, or a group with ``component``).
    chunks
        Dask chunks; by default a Zarr array's own chunks, and 1024 cells per
        axis for ``.npy``.
    component
        Array inside a Zarr group.
    """
    import dask.array as da

    text = os.fspath(path)
    if not os.path.exists(text):
        raise ValueError(f"input {text!r} does not exist")
    if text.endswith(".npy") and os.path.isfile(text):
        if component is not None:
            raise ValueError(f"--component {component!r} applies to Zarr inputs, not {text!r}")
        try:
            reader = NpyReader.open(text)
        except ValueError as error:
            raise ValueError(f"input {text!r} is not a readable .npy file: {error}") from error
        return da.from_array(reader, chunks=chunks or 1024,
                             asarray=False, meta=np.empty((0,) * reader.ndim, reader.dtype))
    import zarr

    try:
        node = zarr.open(store=text, mode="r")
    except Exception as error:  # zarr raises several types for "not a store"
        raise ValueError(f"input {text!r} is neither a .npy file nor a Zarr store: {error}") from error
    if isinstance(node, zarr.Group):
        names = sorted(name for name, _ in node.arrays())
        if component is None:
            if len(names) != 1:
                raise ValueError(
                    f"input {text!r} is a Zarr group with arrays {names}; choose one with --component"
                )
            component = names[0]
        if component not in names:
            raise ValueError(f"input {text!r} has no array {component!r}; it has {names}")
        node = node[component]
    array = da.from_zarr(node)
    return array.rechunk(chunks) if chunks else array


def _real(path: str) -> str:
    return os.path.normcase(os.path.realpath(os.path.abspath(path)))


def _contains(folder: str, inner: str) -> bool:
    return inner == folder or inner.startswith(folder.rstrip(os.sep) + os.sep)


def check_separate(input_path: str | os.PathLike[str], output_path: str | os.PathLike[str]) -> None:
    """Refuse an output that is, contains or lies inside the input, however spelled.

    Both paths are resolved (symbolic links, ``..``, ``.``, trailing
    slashes, case on case-insensitive systems) before they are compared, and
    two existing paths that are the same file (a hard link, a bind mount)
    are caught by device and inode. Call it before anything is written:
    ``--force`` deletes the old output, and Dask reads the input lazily,
    after that.

    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> check_separate(os.path.join(folder, "in.zarr"), os.path.join(folder, "out.zarr"))
    >>> check_separate(os.path.join(folder, "in.zarr"), os.path.join(folder, "x", "..", "in.zarr/"))
    Traceback (most recent call last):
    ...
    ValueError: output '...' is the input '...' (both resolve to '...'); ...
    """
    source, target = os.fspath(input_path), os.fspath(output_path)
    real_source, real_target = _real(source), _real(target)
    fix = "write the output to a new path outside the input"
    if real_source == real_target or _same_file(source, target):
        raise ValueError(
            f"output {target!r} is the input {source!r} (both resolve to {real_target!r}); "
            f"--force would delete the input before it is read: {fix}"
        )
    if _contains(real_target, real_source):
        raise ValueError(
            f"output {target!r} contains the input {source!r} (resolved: {real_source!r} is inside "
            f"{real_target!r}); --force would delete it: {fix}"
        )
    if _contains(real_source, real_target):
        raise ValueError(
            f"output {target!r} is inside the input {source!r} (resolved: {real_target!r} is "
            f"inside {real_source!r}); writing it would change the input: {fix}"
        )
    if os.path.isdir(target) and not os.path.islink(target) and os.path.isfile(source):
        # an output store that holds a hard link to the input file
        info = os.stat(source)
        if info.st_nlink > 1:
            for folder, _, names in os.walk(target):
                for name in names:
                    if _same_file(source, os.path.join(folder, name)):
                        raise ValueError(
                            f"output {target!r} holds {os.path.join(folder, name)!r}, a hard link "
                            f"to the input {source!r}: {fix}"
                        )


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def check_convolvable(dtype: Any, what: str) -> np.dtype[Any]:
    """``dtype`` if a convolution can read it (bool, integers, reals); raise otherwise.

    Complex numbers are refused rather than cast (a cast drops the
    imaginary part without a word); so are strings, bytes, objects,
    records, dates and durations.

    >>> check_convolvable("int16", "input").name
    'int16'
    >>> check_convolvable("complex64", "input")
    Traceback (most recent call last):
    ...
    ValueError: input has dtype complex64: ...
    """
    kind_rules = {
        "c": "complex numbers are not convolved here (casting would drop the imaginary part); "
             "convolve the real and imaginary parts as two arrays (x.real, x.imag)",
        "U": "text cannot be convolved; convert it to numbers first",
        "S": "bytes cannot be convolved; convert them to numbers first",
        "O": "Python objects cannot be convolved; save a numeric array (e.g. float32)",
        "V": "records or raw bytes cannot be convolved; save one numeric field as its own array",
        "M": "dates cannot be convolved; convert them to numbers (e.g. .astype('int64'))",
        "m": "durations cannot be convolved; convert them to numbers (e.g. .astype('int64'))",
    }
    resolved = np.dtype(dtype)
    if resolved.kind in kind_rules:
        raise ValueError(f"{what} has dtype {resolved}: {kind_rules[resolved.kind]}")
    if resolved.kind not in "biuf":  # pragma: no cover - no other kinds exist today
        raise ValueError(f"{what} has dtype {resolved}, which is not a number type")
    return resolved


def fingerprint(*parts: Any) -> str:
    """A short SHA-256 of arrays, strings and numbers (to recognise a run's settings)."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(str((part.shape, part.dtype.str)).encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(repr(part).encode())
    return digest.hexdigest()[:16]


def _is_zarr_store(path: Path) -> bool:
    return path.is_dir() and any(
        (path / name).exists() for name in ("zarr.json", ".zarray", ".zgroup")
    )


def prepare_output(
    path: str | os.PathLike[str],
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dtype: Any,
    settings: dict[str, Any],
    *,
    force: bool = False,
    resume: bool = False,
) -> bool:
    """Create the output Zarr array, or check the one an interrupted run left.

    Returns ``True`` when the output is already complete (``resume`` only).

    Raises
    ------
    ValueError
        The path exists and neither ``force`` nor ``resume`` is given; it
        exists but is not a Zarr store (never deleted); ``resume`` finds an
        output made with other settings, or no output at all.
    """
    import zarr

    target = Path(path)
    if force and resume:
        raise ValueError("choose --force (start over) or --resume (finish a run), not both")
    exists = target.exists() or target.is_symlink()
    if target.is_symlink():
        raise ValueError(
            f"output {str(target)!r} is a symbolic link; give the path of the store itself "
            f"({os.path.realpath(target)!r}) or a new path"
        )
    if exists and not _is_zarr_store(target):
        raise ValueError(
            f"output {str(target)!r} exists and is not a Zarr store; refusing to touch it "
            "(choose another path)"
        )
    if resume:
        if not exists:
            raise ValueError(f"--resume: output {str(target)!r} does not exist; run without --resume")
        array = zarr.open_array(store=str(target), mode="r")
        stored = dict(array.attrs.get(_ATTRS_KEY, {}))  # type: ignore[arg-type]
        complete = bool(stored.pop("complete", False))
        wanted = json.loads(json.dumps(settings))
        differs = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
        if differs or array.shape != tuple(shape) or array.chunks != tuple(chunks):
            raise ValueError(
                f"--resume: output {str(target)!r} was made with other settings "
                f"({', '.join(differs) or 'shape/chunks'} differ); use --force to start over"
            )
        return complete
    if exists and not force:
        raise ValueError(
            f"output {str(target)!r} already exists; pass --force to overwrite it or "
            "--resume to finish an interrupted run"
        )
    # The new store (array, settings, marker folder) is built in a temporary
    # folder beside the target and renamed into place only when whole, so a
    # run killed here never leaves a store without its settings.
    parent = target.parent if str(target.parent) else Path(".")
    # (its name is chosen before it exists, so an interrupt while it is being made
    # leaves nothing behind either)
    building: Path | None = None
    try:
        while building is None:
            candidate = parent / f".{target.name}.{secrets.token_hex(8)}.part"
            building = candidate
            try:
                os.mkdir(candidate)
            except FileExistsError:
                building = None  # another run's: try another name
        array = zarr.open_array(store=str(building), mode="w", shape=shape, chunks=chunks, dtype=dtype)
        array.attrs[_ATTRS_KEY] = {**json.loads(json.dumps(settings)), "complete": False}
        (building / MARKER_FOLDER).mkdir()
        if exists:
            shutil.rmtree(target)
        os.rename(building, target)
    except BaseException:
        if building is not None:
            shutil.rmtree(building, ignore_errors=True)
        raise
    return False


def _marker(path: str, block: tuple[int, ...]) -> Path:
    return Path(path) / MARKER_FOLDER / ".".join(str(i) for i in block)


def pending_blocks(path: str | os.PathLike[str], numblocks: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Block indices without a completion marker, in row-major order."""
    return [block for block in _all_blocks(numblocks) if not _marker(os.fspath(path), block).exists()]


def _all_blocks(numblocks: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
    yield from np.ndindex(*numblocks)


def write_block(values: np.ndarray, path: str, block: tuple[int, ...], chunks: tuple[int, ...]) -> int:
    """Write one output block into its Zarr chunk, then mark it done."""
    import zarr

    array = zarr.open_array(store=path, mode="r+")
    region = tuple(slice(i * c, i * c + n) for i, c, n in zip(block, chunks, values.shape))
    array[region] = values
    _marker(path, block).touch()
    return 1


def write_block_task(
    values: np.ndarray, path: str, chunks: tuple[int, ...], block_id: tuple[int, ...] | None = None
) -> np.ndarray:
    """:func:`write_block` as a ``map_blocks`` function: one ``int8`` per block written."""
    assert block_id is not None
    write_block(values, path, tuple(block_id), chunks)
    return np.ones((1,) * values.ndim, np.int8)


def finish_output(path: str | os.PathLike[str]) -> None:
    """Mark the output complete and remove the per-block markers."""
    import zarr

    array = zarr.open_array(store=os.fspath(path), mode="r+")
    attrs = dict(array.attrs.get(_ATTRS_KEY, {}))  # type: ignore[arg-type]
    attrs["complete"] = True
    array.attrs[_ATTRS_KEY] = attrs
    shutil.rmtree(Path(path) / MARKER_FOLDER, ignore_errors=True)
