"""Time and peak memory of ``convarith animate`` as the number of frames grows.

Each case runs the command in a fresh process and reads that process's
wall time, CPU time and peak resident memory (``os.wait4``). Frames are
streamed to the encoder, so peak memory should stay flat while the frame
count grows 20-fold. Machines here are shared: CPU seconds are steadier than
wall seconds.

    python benchmarks/animate_stream.py [--sizes 7,14,28,64] [--format gif]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time


def measure(argv: list[str]) -> tuple[float, float, float, int]:
    """Wall seconds, CPU seconds (user + system), peak RSS in MiB, exit status of one run."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    peak = usage.ru_maxrss / 1024 if sys.platform != "darwin" else usage.ru_maxrss / 2**20
    return wall, usage.ru_utime + usage.ru_stime, peak, os.waitstatus_to_exitcode(status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="7,14,28,64", help="input sizes (N for an NxN input)")
    parser.add_argument("--format", default="gif", choices=("gif", "apng"))
    parser.add_argument("--padding", default="valid", help="-p of the command (same: N*N frames)")
    args = parser.parse_args()
    print(f"convarith animate N -k 3 -p {args.padding} -o out.{args.format}")
    print(f"{'N':>4} {'frames':>7} {'wall s':>8} {'CPU s':>7} {'peak RSS MiB':>13} {'file KiB':>9}")
    with tempfile.TemporaryDirectory() as folder:
        for size in (int(text) for text in args.sizes.split(",")):
            out = os.path.join(folder, f"out{size}.{args.format}")
            argv = [sys.executable, "-c", "import sys; from convarith.cli import main; sys.exit(main(sys.argv[1:]))",
                    "animate", str(size), "-k", "3",
                    "-p", args.padding, "-o", out]
            wall, cpu, peak, status = measure(argv)
            frames = (size - 2) ** 2 if args.padding == "valid" else size * size
            kib = os.path.getsize(out) / 1024 if status == 0 else float("nan")
            print(f"{size:>4} {frames:>7} {wall:>8.2f} {cpu:>7.2f} {peak:>13.1f} {kib:>9.0f}"
                  + ("" if status == 0 else f"  (exit {status})"))


if __name__ == "__main__":
    main()
