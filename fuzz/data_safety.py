"""Fuzz the classes of data loss: outputs that are the input, dtypes, special files, picture options.

Four targets, each drawing cases with hypothesis and checking an invariant
that does not come from convarith's own answer:

``paths``
    ``convarith apply IN OUT [--force]`` where OUT is IN or nested in it, or
    IN nested in OUT, spelled with ``./``, ``x/..``, doubled and trailing
    slashes, absolute or relative, through symbolic links to the file or to a
    folder above it, or as a hard link; or an unrelated path. Oracle:
    ``os.path.realpath`` + ``os.path.commonpath`` (and ``os.stat`` inodes)
    say whether the two are related. Invariant: the input's bytes never
    change; related paths exit 2 with one line naming the input and nothing
    is created; unrelated ones exit 0 or 2 without a traceback.
``dtypes``
    A ``.npy`` input of a random dtype (bool, ints, floats, complex, text,
    bytes, objects, records, dates, durations) and layout. Invariant: dtypes
    NumPy cannot convolve without losing information (kind ``c U S O V M m``)
    exit 2 and no output store exists; the others exit 0 and the output equals
    the engine on a float copy.
``destinations``
    Every picture writer (GIF, APNG, PNG step, SVG) aimed at an absent path, a
    regular file, a folder, a FIFO, a socket, a symbolic link (to a file, to
    ``/dev/null``, dangling) or ``/dev/null`` itself, with and without
    ``--force``. Invariant: only an absent path or (with ``--force``) a
    regular file is written; anything else exits 2 and is left as it was.
``pictures``
    ``convarith animate`` with random sizes and hostile ``--fps``,
    ``--scale``, ``--every``, ``--step`` and ``--groups``. Invariant: exit 0
    with a file whose frame count is ``ceil(steps / every)``, or exit 2 with
    one line; never a traceback.

``python fuzz/data_safety.py --budget 300`` is a full run (inputs per
target); ``tests/test_fuzz_data_safety.py`` runs a small budget in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import math
import os
import shutil
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


class Finding(AssertionError):
    """An outcome the invariants forbid."""


COUNTS: dict[str, int] = {}


def _settings(budget: int) -> settings:
    return settings(max_examples=budget, deadline=None, database=None, derandomize=True,
                    phases=(Phase.generate,), suppress_health_check=list(HealthCheck))


def _cli(argv: list[str]) -> tuple[int, str]:
    from convarith.cli import main

    errors = io.StringIO()
    with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = main(argv)
        except SystemExit as exit_:  # argparse
            status = int(exit_.code or 0)
    return status, errors.getvalue()


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        sha.update(str(file.relative_to(path.parent)).encode())
        sha.update(file.read_bytes())
    return sha.hexdigest()


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@contextlib.contextmanager
def _folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cvfz"))
    cwd = os.getcwd()
    try:
        os.chdir(path)
        yield path
    finally:
        os.chdir(cwd)
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- paths


def _respell(path: str, draw: Callable[[Any], Any], root: Path) -> str:
    """Another spelling of ``path`` (relative to ``root``) naming the same place."""
    parts = path.split("/")
    spelled: list[str] = []
    for part in parts:
        if draw(st.booleans()):
            spelled.append(".")
        if draw(st.integers(0, 4)) == 0:
            spelled.extend(["nowhere" if draw(st.booleans()) else "sub", ".."])
        spelled.append(part)
    text = "/".join(spelled)
    if draw(st.booleans()):
        text = text.replace("/", "//", 1)
    if draw(st.booleans()):
        text += "/"
    if draw(st.booleans()):
        text = str(root / text)
    return text


def _related(a: str, b: str) -> bool:
    real_a, real_b = os.path.realpath(a), os.path.realpath(b)
    try:
        common = os.path.commonpath([real_a, real_b])
    except ValueError:
        return False
    if common in (real_a, real_b):
        return True
    with contextlib.suppress(OSError):
        if os.path.samefile(a, b):
            return True
    return False


def target_paths(budget: int) -> Callable[[], None]:
    @_settings(budget)
    @given(st.data())
    def test(data: st.DataObject) -> None:
        import zarr

        draw = data.draw
        COUNTS["paths"] = COUNTS.get("paths", 0) + 1
        with _folder() as root:
            (root / "sub").mkdir()
            (root / "deep" / "er").mkdir(parents=True)
            zarr_input = draw(st.booleans())
            where = draw(st.sampled_from(["", "deep/", "deep/er/"]))
            source = f"{where}in.zarr" if zarr_input else f"{where}in.npy"
            values = np.arange(48, dtype=np.float32).reshape(8, 6)
            if zarr_input:
                array = zarr.open_array(str(root / source), mode="w", shape=values.shape, chunks=(4, 3),
                                        dtype="float32")
                array[:] = values
            else:
                np.save(root / source, values)
            relation = draw(st.sampled_from(["same", "inside-input", "input-inside", "symlink",
                                             "folder-link", "hard-link", "unrelated"]))
            if relation == "same":
                target = _respell(source, draw, root)
            elif relation == "inside-input":
                target = _respell(source, draw, root) + "/" + draw(st.sampled_from(["o.zarr", "a/b.zarr"]))
            elif relation == "input-inside":
                # an old output store that holds the input
                outer = where.rstrip("/") or "."
                if outer == ".":
                    target = _respell(".", draw, root)
                else:
                    zarr.open_array(str(root / outer / "marker.zarr"), mode="w", shape=(1,), dtype="f4")
                    target = _respell(outer, draw, root)
            elif relation == "symlink":
                os.symlink(root / source, root / "alias")
                target = _respell("alias", draw, root)
            elif relation == "folder-link":
                os.symlink(root / (where or "."), root / "up")
                target = _respell("up/" + Path(source).name, draw, root)
            elif relation == "hard-link" and not zarr_input:
                os.link(root / source, root / "twin.npy")
                target = "twin.npy"
            else:
                target = draw(st.sampled_from(["out.zarr", "sub/out.zarr", "in.zarr.old", "deep/out.zarr"]))
            force = draw(st.booleans())
            source_spelled = _respell(source, draw, root) if draw(st.booleans()) else source
            related = _related(source_spelled, target)
            before, files = _digest(root / source), _listing(root)
            status, message = _cli(["apply", source_spelled, target, "--preset", "box", "-q",
                                    *(["--force"] if force else [])])
            case = f"apply {source_spelled!r} {target!r} force={force} ({relation})"
            if _digest(root / source) != before:
                raise Finding(f"{case}: the input changed (exit {status}, {message.strip()!r})")
            if "Traceback" in message or status not in (0, 2):
                raise Finding(f"{case}: exit {status}: {message[-400:]}")
            if related:
                if status != 2 or "input" not in message:
                    raise Finding(f"{case}: related paths not refused: exit {status} {message!r}")
                if _listing(root) != files:
                    raise Finding(f"{case}: refused but the folder changed")

    return test


# --------------------------------------------------------------------------- dtypes

REFUSED_KINDS = "cUSOVMm"


def _dtype_values(dtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    kind = np.dtype(dtype).kind if dtype not in ("record", "object") else dtype
    if kind == "record":
        return np.zeros(shape, [("a", "f4"), ("b", "i2")])
    if kind == "object":
        return np.full(shape, 1.5, dtype=object)
    if kind in "US":
        return np.full(shape, "4", dtype=dtype)
    if kind in "Mm":
        return rng.integers(0, 100, shape).astype(dtype)
    if kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    if kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    return rng.integers(0, 50, shape).astype(dtype)


DTYPES = ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float16",
          "float32", "float64", "complex64", "complex128", "<U3", "|S2", "object", "record",
          "datetime64[s]", "datetime64[D]", "timedelta64[ms]"]


def target_dtypes(budget: int) -> Callable[[], None]:
    @_settings(budget)
    @given(st.sampled_from(DTYPES), st.sampled_from([(7, 6), (7, 6, 2), (2, 7, 6, 1)]),
           st.sampled_from([None, "float32", "float64"]), st.integers(0, 2**31))
    def test(dtype: str, shape: tuple[int, ...], compute: str | None, seed: int) -> None:
        import zarr

        from convarith import ConvSpec
        from convarith.engine import conv
        from convarith.scale.presets import kernel_preset

        COUNTS["dtypes"] = COUNTS.get("dtypes", 0) + 1
        values = _dtype_values(dtype, shape, np.random.default_rng(seed))
        with _folder() as root:
            np.save(root / "in.npy", values, allow_pickle=dtype == "object")
            argv = ["apply", "in.npy", "out.zarr", "--preset", "box", "-q", *(["--dtype", compute] if compute else [])]
            status, message = _cli(argv)
            case = f"dtype {dtype} shape {shape} --dtype {compute}"
            if "Traceback" in message:
                raise Finding(f"{case}: {message[-400:]}")
            if values.dtype.kind in REFUSED_KINDS or dtype == "record":
                if status != 2 or (root / "out.zarr").exists() or len(os.listdir(root)) != 1:
                    raise Finding(f"{case}: not refused cleanly: exit {status} {message!r} {os.listdir(root)}")
                return
            if status != 0:
                raise Finding(f"{case}: a numeric input was refused: {message!r}")
            result = zarr.open_array(str(root / "out.zarr"), mode="r")[:]
            kind = np.dtype(compute) if compute else (values.dtype if values.dtype.kind == "f" else np.dtype("float32"))
            x = values.astype(np.float64)
            x = x[..., None] if len(shape) == 2 else x
            x = x[None] if x.ndim == 3 else x
            channels = x.shape[-1]
            kernel = kernel_preset("box", (3, 3), channels, "float64")
            expected = conv(x, kernel, ConvSpec(3, groups=channels))
            expected = expected.reshape(result.shape)
            tolerance = 2e-2 if kind == np.float16 else 1e-5
            if not np.allclose(result.astype(np.float64), expected, rtol=tolerance, atol=tolerance * 50):
                raise Finding(f"{case}: result differs from the engine by "
                              f"{np.abs(result - expected).max()}")

    return test


# --------------------------------------------------------------------------- destinations


def _make_destination(kind: str, path: Path, stack: contextlib.ExitStack) -> Path:
    if kind == "regular":
        path.write_bytes(b"old")
    elif kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        stack.callback(server.close)
    elif kind == "link-file":
        (path.parent / "real").write_bytes(b"real")
        os.symlink(path.parent / "real", path)
    elif kind == "link-device":
        os.symlink("/dev/null", path)
    elif kind == "link-dangling":
        os.symlink(path.parent / "missing", path)
    elif kind == "device":
        return Path("/dev/null")
    return path


def _state(path: Path) -> tuple[Any, ...]:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return (None,)
    content = path.read_bytes() if stat.S_ISREG(info.st_mode) else None
    return (stat.S_IFMT(info.st_mode), info.st_ino, info.st_rdev, content)


def target_destinations(budget: int) -> Callable[[], None]:
    kinds = ["absent", "regular", "folder", "fifo", "socket", "link-file", "link-device", "link-dangling",
             "device"]

    @_settings(budget)
    @given(st.sampled_from(kinds), st.sampled_from([".gif", ".apng", ".svg", ".png"]), st.booleans(),
           st.booleans())
    def test(kind: str, suffix: str, force: bool, step: bool) -> None:
        COUNTS["destinations"] = COUNTS.get("destinations", 0) + 1
        with _folder() as root, contextlib.ExitStack() as stack:
            target = _make_destination(kind, root / f"out{suffix}", stack)
            before = _state(target)
            argv = ["animate", "4", "-k", "3", "-o", str(target)]
            if step and suffix in (".png", ".svg"):
                argv += ["--step", "1"]
            status, message = _cli([*argv, *(["--force"] if force else [])])
            case = f"animate -o {target} ({kind}) force={force}"
            if "Traceback" in message or status not in (0, 2):
                raise Finding(f"{case}: exit {status}: {message[-400:]}")
            may_write = kind == "absent" or (kind == "regular" and force)
            if may_write:
                if status != 0 or not stat.S_ISREG(os.lstat(target).st_mode) or _state(target) == before:
                    raise Finding(f"{case}: not written: exit {status} {message!r}")
            else:
                if status != 2 or _state(target) != before or len(message.strip().splitlines()) != 1:
                    raise Finding(f"{case}: exit {status}, {message!r}; destination changed: "
                                  f"{_state(target) != before}")
            if any(name.endswith(".part") for name in os.listdir(root)):
                raise Finding(f"{case}: a temporary file was left")

    return test


# --------------------------------------------------------------------------- pictures

hostile_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32).map(lambda v: f"{v!r}"),
    st.integers(-10, 10**9).map(str),
    st.sampled_from(["0", "-0", "1e-300", "1e308", "nan", "inf", "0.001", "0.01", "50", "50.0001", "x", ""]),
)


def target_pictures(budget: int) -> Callable[[], None]:
    @_settings(budget)
    @given(st.integers(1, 9), st.integers(1, 4), st.sampled_from([".gif", ".apng", ".png", ".svg"]),
           st.dictionaries(st.sampled_from(["--fps", "--scale", "--every", "--step", "--groups"]),
                           hostile_numbers, max_size=3))
    def test(size: int, kernel: int, suffix: str, options: dict[str, str]) -> None:
        from PIL import Image

        COUNTS["pictures"] = COUNTS.get("pictures", 0) + 1
        with _folder() as root:
            argv = ["animate", str(size), "-k", str(kernel), "-o", str(root / f"x{suffix}")]
            for name, value in options.items():
                argv += [f"{name}={value}"]
            started = time.perf_counter()
            status, message = _cli(argv)
            case = "convarith " + " ".join(argv).replace(str(root) + "/", "")
            if "Traceback" in message or status not in (0, 2):
                raise Finding(f"{case}: exit {status}: {message[-400:]}")
            errors = [line for line in message.splitlines() if ": error:" in line]
            if status == 2 and (len(errors) != 1 or not message.strip().endswith(errors[0].strip())):
                # one error line (argparse's own type errors come after its usage text)
                raise Finding(f"{case}: not one error line: {message!r}")
            if time.perf_counter() - started > 60:
                raise Finding(f"{case}: took {time.perf_counter() - started:.0f} s")
            if status == 0 and suffix in (".gif", ".apng") and "--step" not in options:
                steps = (size - kernel + 1) ** 2
                every = int(options.get("--every", "1"))
                frames = Image.open(root / f"x{suffix}").n_frames
                if frames != math.ceil(steps / every):
                    raise Finding(f"{case}: {frames} frames for {steps} steps, every {every}")

    return test


TARGETS: dict[str, Callable[[int], Callable[[], None]]] = {
    "paths": target_paths,
    "dtypes": target_dtypes,
    "destinations": target_destinations,
    "pictures": target_pictures,
}


def run(budget: int, names: list[str] | None = None, stream: Any = sys.stdout) -> dict[str, int]:
    """Run the targets; raises :class:`Finding` on the first broken invariant."""
    COUNTS.clear()
    total = 0.0
    for name, build in TARGETS.items():
        if names and name not in names:
            continue
        started = time.perf_counter()
        build(budget)()
        elapsed = time.perf_counter() - started
        total += elapsed
        print(f"{name:14s} {COUNTS.get(name, 0):6d} inputs  {elapsed:7.1f} s", file=stream)
    print(f"{'total':14s} {sum(COUNTS.values()):6d} inputs  {total:7.1f} s", file=stream)
    return dict(COUNTS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=300, help="inputs per target")
    parser.add_argument("--targets", help=f"comma-separated, of {', '.join(TARGETS)}")
    args = parser.parse_args(argv)
    try:
        run(args.budget, args.targets.split(",") if args.targets else None)
    except Finding as finding:
        print(f"FINDING: {finding}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
