"""Kill convarith while it writes, and check nothing half-written is left.

For each writer (``animate``, ``tour``, ``save`` of a model, ``apply``), the
command runs once to completion to time it, then ``--trials`` times it is
interrupted at a random moment within that time, alternately by SIGKILL (no
chance to clean up) and SIGINT (Ctrl-C). After each interruption:

- the finished file is either absent or complete and valid (a GIF with every
  frame, a page that ends in ``</html>``, a model that loads, a Zarr store
  whose finished chunks are right and that ``--resume`` completes exactly);
- after SIGINT no temporary files are left behind;
- an existing file is never overwritten without ``--force``.

``python fuzz/faults.py --trials 40`` is the full run; CI runs a few.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PY = sys.executable


@dataclass
class Outcome:
    runs: int = 0
    complete: int = 0
    absent: int = 0
    problems: list[str] = field(default_factory=list)


def _cli(*args: str) -> list[str]:
    return [PY, "-m", "convarith.cli", *args]


def _interrupt(command: list[str], delay: float, sig: int, cwd: Path) -> int | None:
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return process.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        process.send_signal(sig)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        return None


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".part") or ".tmp" in p.name)


# --------------------------------------------------------------------------- writers


@dataclass
class Writer:
    name: str
    command: Callable[[Path], list[str]]  # folder -> command line
    output: Callable[[Path], Path]
    check: Callable[[Path, Path], str | None]  # (folder, output) -> problem or None
    prepare: Callable[[Path], None] = lambda folder: None
    after: Callable[[Path], str | None] = lambda folder: None  # recovery step (resume)


def _gif_frames(size: int, kernel: int, dilation: int) -> int:
    from convarith import ConvSpec

    return len(list(ConvSpec(kernel, dilation=dilation).resolve((size, size)).positions()))


def check_gif(folder: Path, path: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            frames = getattr(image, "n_frames", 1)
            for i in range(frames):
                image.seek(i)
                image.load()
    except Exception as error:  # noqa: BLE001 - any failure to read is the finding
        return f"{path.name} is unreadable: {error}"
    expected = _gif_frames(12, 3, 2)
    if frames < expected:
        return f"{path.name} has {frames} frames, expected at least {expected}"
    return None


def check_page(folder: Path, path: Path) -> str | None:
    text = path.read_text(errors="replace")
    if not text.rstrip().endswith("</html>"):
        return f"{path} does not end in </html> ({len(text)} bytes)"
    return None


SAVE_SCRIPT = """
import sys
import numpy as np
from convarith.nn import Sequential, Input, Conv2D, Flatten, Dense
model = Sequential([Input(shape=(28, 28, 1)), Conv2D(64, 3, padding="same"),
                    Conv2D(64, 3, padding="same"), Flatten(), Dense(10)])
for _ in range(int(sys.argv[2])):
    model.save(sys.argv[1], overwrite=True)
"""


def check_model(folder: Path, path: Path) -> str | None:
    code = ("import sys, numpy as np\nfrom convarith.nn import load_model\n"
            "m = load_model(sys.argv[1])\nassert m.predict(np.zeros((1, 28, 28, 1), 'float32')).shape == (1, 10)")
    result = subprocess.run([PY, "-c", code, str(path)], capture_output=True, text=True)
    if result.returncode:
        return f"{path.name} does not load: {result.stderr.strip().splitlines()[-1:]}"
    return None


def prepare_apply(folder: Path) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    np.save(folder / "image.npy", rng.standard_normal((768, 768, 1)).astype("float32"))


def apply_command(folder: Path) -> list[str]:
    return _cli("apply", str(folder / "image.npy"), str(folder / "out.zarr"), "-k", "3",
                "-p", "same", "--preset", "blur", "--chunks", "64", "--no-progress")


def resume_apply(folder: Path) -> str | None:
    """Finish an interrupted store with --resume and compare with the in-memory engine."""
    import numpy as np

    store = folder / "out.zarr"
    if store.exists():
        result = subprocess.run(apply_command(folder) + ["--resume"], capture_output=True, text=True)
        if result.returncode:
            return f"--resume failed: {result.stderr.strip()[-300:]}"
    else:
        return None
    import zarr

    import convarith
    from convarith.scale.presets import kernel_preset

    image = np.load(folder / "image.npy")
    kernel = kernel_preset("blur", (3, 3))
    spec = convarith.ConvSpec(3, padding="same", groups="depthwise")
    expected = convarith.conv(image[None], kernel, spec)[0]
    got = np.asarray(zarr.open(str(store), mode="r"))
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-5, atol=1e-5):
        return "the resumed store differs from the in-memory engine"
    return None


WRITERS = {
    "animate": Writer(
        "animate",
        lambda folder: _cli("animate", "12", "-k", "3", "-d", "2", "--values", "-o", str(folder / "out.gif")),
        lambda folder: folder / "out.gif", check_gif,
    ),
    "tour": Writer(
        "tour", lambda folder: _cli("tour", "--out", str(folder / "tour")),
        lambda folder: folder / "tour" / "index.html", check_page,
    ),
    "save": Writer(
        "save", lambda folder: [PY, "-c", SAVE_SCRIPT, str(folder / "model.npz"), "20"],
        lambda folder: folder / "model.npz", check_model,
    ),
    "apply": Writer(
        "apply", apply_command, lambda folder: folder / "out.zarr",
        lambda folder, path: None, prepare=prepare_apply, after=resume_apply,
    ),
}


def trial_writer(writer: Writer, trials: int, rng: random.Random) -> Outcome:
    outcome = Outcome()
    with tempfile.TemporaryDirectory(prefix=f"convarith-faults-{writer.name}-") as root:
        base = Path(root)
        writer.prepare(base)
        start = time.perf_counter()
        finished = subprocess.run(writer.command(base), cwd=base, capture_output=True, text=True)
        full = time.perf_counter() - start
        if finished.returncode != 0:
            outcome.problems.append(f"{writer.name}: the uninterrupted run failed: {finished.stderr[-300:]}")
            return outcome
        problem = writer.check(base, writer.output(base))
        if problem:
            outcome.problems.append(f"{writer.name} (uninterrupted): {problem}")

        # an existing file is not overwritten without --force
        target = writer.output(base)
        if target.is_file():
            before = hashlib.sha256(target.read_bytes()).hexdigest()
            again = subprocess.run(writer.command(base), cwd=base, capture_output=True, text=True)
            if again.returncode == 0 and writer.name != "save":
                outcome.problems.append(f"{writer.name}: overwrote an existing file without --force")
            if hashlib.sha256(target.read_bytes()).hexdigest() != before and writer.name != "save":
                outcome.problems.append(f"{writer.name}: the existing file changed without --force")

        for trial in range(trials):
            folder = base / f"trial{trial}"
            folder.mkdir()
            writer.prepare(folder)
            sig = signal.SIGKILL if trial % 2 == 0 else signal.SIGINT
            delay = rng.uniform(0.3, max(0.4, full * 1.1))
            _interrupt(writer.command(folder), delay, sig, folder)
            outcome.runs += 1
            output = writer.output(folder)
            if output.exists():
                problem = writer.check(folder, output)
                if problem:
                    outcome.problems.append(f"{writer.name} trial {trial} ({signal.Signals(sig).name} "
                                            f"after {delay:.2f} s): {problem}")
                else:
                    outcome.complete += 1
            else:
                outcome.absent += 1
            problem = writer.after(folder)
            if problem:
                outcome.problems.append(f"{writer.name} trial {trial}: {problem}")
            if sig == signal.SIGINT and _leftovers(folder):
                outcome.problems.append(f"{writer.name} trial {trial}: SIGINT left {_leftovers(folder)}")
    return outcome


def run(trials: int, names: list[str] | None = None, seed: int | None = None,
        stream: Any = sys.stdout) -> dict[str, Outcome]:
    seed = random.randrange(2**32) if seed is None else seed
    print(f"seed {seed}", file=stream)
    rng = random.Random(seed)
    results = {}
    for name, writer in WRITERS.items():
        if names and name not in names:
            continue
        outcome = trial_writer(writer, trials, rng)
        results[name] = outcome
        print(f"{name:8s} {outcome.runs:3d} interrupted runs: {outcome.complete} complete, "
              f"{outcome.absent} absent, {len(outcome.problems)} problems", file=stream)
        for problem in outcome.problems[:10]:
            print(f"  PROBLEM: {problem}", file=stream)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--targets", help="comma-separated: " + ",".join(WRITERS))
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "jax")
    results = run(args.trials, args.targets.split(",") if args.targets else None, args.seed)
    return 1 if any(o.problems for o in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
