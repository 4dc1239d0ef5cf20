"""Train a CNN (`convarith train`'s, or another) with convarith, Keras 3 (JAX) and PyTorch; compare.

Same data split, same architecture, same initial weights (copied from the
convarith model), same optimizer (Adam), learning rate, batch size and
epochs. Prints test accuracy, training wall time and process CPU time of
each, one after the other in one process (PyTorch is skipped when not
installed; its convolutions pad by convarith's per-side padding, so Keras's
"same" with strides is reproduced; it runs on as many threads as the machine
has cores, like the others). ``--model`` picks the network: ``lesson``
(`convarith train`'s), ``deep`` (four convolutions, two of stride 2) or
``conv1d`` (1-D convolutions over the images' rows).

Each run is also timed epoch by epoch: the first epoch includes Keras's
compilation, the later ones ("steady epoch", their median) are the cost of
training itself. ``--repeats N`` trains each framework N times, interleaved, each
round starting with the next framework (so none always runs first on a machine
whose load drifts); the steady epochs and the ratios ours / theirs are taken run
by run (a round's convarith against the same round's Keras and PyTorch) and
printed as their median with the lowest and highest, so the spread shows. The
lesson model's epoch is ~0.1 s: take ``--epochs 8 --repeats 5`` or more. On a busy
machine wall times swing; process CPU time (all threads) is steadier.

Usage:
    KERAS_BACKEND=jax python scripts/compare_train_keras.py [--model lesson|deep|conv1d]
        [--epochs 8] [--batch-size 32] [--padding same] [--strides 1] [--dilation 1]
        [--repeats 1] [--profile FILE] [--one-thread] [--breakdown]

``--profile FILE`` writes convarith's steady epochs (all but the first) as a
cProfile file (``python -m pstats FILE``); with ``--one-thread`` its clock is the
thread's CPU time (everything runs on the calling thread), which other processes
on a busy machine do not inflate. The profiled runs' own times include the
profiler's overhead (several times a step's): time without ``--profile``.

``--breakdown`` only trains convarith (one thread, ``--epochs`` after a first
epoch) and prints where a steady training step's time goes: the engine's
convolution forward, input-gradient and weight-gradient calls, the rest of the
convolution layers (bias gradient, activation), the dense layer, the loss, the
optimizer and the step's own Python (each call timed on the thread's CPU clock;
the timers add a few microseconds a call). ``--breakdown --breakdown-threads 2``
does the same with the engine on two threads, timed by the wall clock (the step's
thread CPU time would leave out the helpers' work): run it at real-time priority
(``chrt -f 10``) on a busy machine, beside the one-thread table.

``--one-thread`` runs all three on one thread (convarith's engine and BLAS,
PyTorch's ``set_num_threads(1)``, XLA's CPU client without its thread pool):
on a machine whose cores are busy with other work, the CPU time of one thread
is the comparison that holds.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "jax")

from convarith import engine, nn  # noqa: E402
from convarith.commands.train import DEFAULTS, build_model, load_digits_images  # noqa: E402

#: the models to compare (``--model``): each convolution as ``(rank, filters, kernel, strides,
#: padding, dilation)``, all with relu, then Flatten and Dense(10, softmax); ``None`` entries
#: take ``--filters``, ``--padding``, ``--strides`` and ``--dilation``. "lesson" is
#: ``convarith train``'s model; "deep" a deeper CNN that halves the image twice with
#: stride-2 "same" convolutions; "conv1d" reads each image as ``size`` steps of ``size``
#: features.
MODELS: dict[str, list[tuple[int, int | None, int, int | None, str | None, int | None]]] = {
    "lesson": [(2, None, 3, None, None, None), (2, None, 3, None, None, None)],
    "deep": [(2, 32, 3, 1, "same", 1), (2, 32, 3, 2, "same", 1), (2, 64, 3, 1, "same", 1),
             (2, 64, 3, 2, "same", 1)],
    "conv1d": [(1, 32, 5, 1, "same", 1), (1, 32, 3, 2, "same", 1), (1, 64, 3, 1, "valid", 1)],
}


def conv_settings(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The model's convolutions, each as the keyword arguments of a Keras ConvND layer
    (with ``rank``)."""
    return [{"rank": rank, "filters": args.filters if filters is None else filters,
             "kernel_size": kernel, "strides": args.strides if strides is None else strides,
             "padding": args.padding if padding is None else padding,
             "dilation_rate": args.dilation if dilation is None else dilation}
            for rank, filters, kernel, strides, padding, dilation in MODELS[args.model]]


def input_shape(args: argparse.Namespace) -> tuple[int, ...]:
    return (args.size, args.size) if MODELS[args.model][0][0] == 1 else (args.size, args.size, 1)


def load_data(args: argparse.Namespace) -> tuple[Any, ...]:
    """The digits split, shaped for the model (no channel axis for 1-D convolutions)."""
    x_train, x_test, y_train, y_test = load_digits_images(args.size, args.seed)
    shape = input_shape(args)
    return (x_train.reshape(-1, *shape), x_test.reshape(-1, *shape), y_train, y_test)


def build_ours(args: argparse.Namespace) -> Any:
    if args.model == "lesson":
        return build_model(args.size, args.padding, args.strides, args.dilation, args.filters,
                           args.seed)
    convs = [(nn.Conv1D if c["rank"] == 1 else nn.Conv2D)(
        **{k: v for k, v in c.items() if k != "rank"}, activation="relu")
        for c in conv_settings(args)]
    return nn.Sequential([nn.Input(shape=input_shape(args)), *convs, nn.Flatten(),
                          nn.Dense(10, activation="softmax")], name=args.model, seed=args.seed)


def keras_model(keras: Any, args: argparse.Namespace) -> Any:
    layer = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D}
    return keras.Sequential([
        keras.Input(shape=input_shape(args)),
        *[layer[c["rank"]](**{k: v for k, v in c.items() if k != "rank"}, activation="relu")
          for c in conv_settings(args)],
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ])


class EpochClock:
    """Wall and CPU time of each epoch (``mark()`` at the start and after each epoch)."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, float]] = []

    def mark(self, *_: object, **__: object) -> None:
        self.marks.append((time.perf_counter(), time.process_time()))

    def epochs(self) -> list[tuple[float, float]]:
        return [(w1 - w0, c1 - c0) for (w0, c0), (w1, c1) in zip(self.marks, self.marks[1:])]

    def steady(self) -> tuple[float, float]:
        """Median wall and CPU time of the epochs after the first (the first if only one)."""
        later = self.epochs()[1:] or self.epochs()
        return (statistics.median(w for w, _ in later), statistics.median(c for _, c in later))


def convarith_clock_callback(clock: EpochClock, profiler: cProfile.Profile | None = None):
    """Marks the clock after each epoch; starts ``profiler`` after the first (the steady
    epochs are profiled, not the first one's compilation)."""
    class Mark(nn.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            clock.mark()
            if epoch == 0 and profiler is not None:
                profiler.enable()

    return Mark()


class PhaseClock:
    """CPU time of the calls of chosen functions, each net of the timed calls inside it.

    ``wrap(owner, name, label)`` replaces ``owner.name`` by a timed version until
    ``restore()``.
    """

    def __init__(self, clock: Any = time.thread_time) -> None:
        self.clock = clock
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._inner: list[float] = []
        self._originals: list[tuple[object, str, object]] = []

    def wrap(self, owner: object, name: str, label: str) -> None:
        original = getattr(owner, name)
        self._originals.append((owner, name, original))
        clock = self

        @functools.wraps(original)
        def timed(*args, **kwargs):
            start = clock.clock()
            clock._inner.append(0.0)
            try:
                return original(*args, **kwargs)
            finally:
                spent = clock.clock() - start
                inner = clock._inner.pop()
                clock.seconds[label] = clock.seconds.get(label, 0.0) + spent - inner
                clock.calls[label] = clock.calls.get(label, 0) + 1
                if clock._inner:
                    clock._inner[-1] += spent

        setattr(owner, name, timed)

    def restore(self) -> None:
        for owner, name, original in reversed(self._originals):
            setattr(owner, name, original)
        self._originals.clear()

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


def breakdown(args: argparse.Namespace) -> None:
    """Train convarith alone (one thread, or ``--breakdown-threads``) and print a steady
    step's time by phase."""
    from convarith.engine import core
    from convarith.nn import layers, losses, models, optimizers

    x_train, _, y_train, _ = load_data(args)
    model = build_ours(args)
    model.compile(nn.Adam(args.learning_rate), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    threads = args.breakdown_threads
    clock = PhaseClock(time.thread_time if threads == 1 else time.perf_counter)
    step = "step: checks, logs, Python"
    for owner, name, label in [
            (models.Sequential, "_step", step),
            (engine, "conv", "conv forward (engine)"),
            (core, "transposed_conv", "conv input gradient (engine)"),
            (core, "_weight_grad", "conv weight gradient (engine)"),
            (engine, "conv_vjp", "conv_vjp: bias gradient, plan"),
            (layers._Conv, "forward", "conv layer: activation"),
            (layers._Conv, "_backward", "conv layer: activation gradient"),
            (layers.Dense, "forward", "dense forward (+softmax)"),
            (layers.Dense, "backward", "dense backward"),
            (layers.Flatten, "forward", "flatten"),
            (layers.Flatten, "backward", "flatten"),
            (optimizers.Optimizer, "apply_if_finite", "optimizer"),
            (losses.CompiledLoss, "values", "loss"),
            (losses.CompiledLoss, "gradients", "loss gradient"),
            (models.Sequential, "_batch_logs", "metrics"),
    ]:
        clock.wrap(owner, name, label)
    try:
        with engine.thread_limit(threads):
            model.fit(x_train, y_train, epochs=1, batch_size=args.batch_size, verbose=0)
            clock.reset()
            start = clock.clock()
            model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                      verbose=0)
            total = clock.clock() - start
    finally:
        clock.restore()
    steps = clock.calls[step]
    mode = "one thread" if threads == 1 else f"{threads} threads"
    timer = "thread CPU time" if threads == 1 else "wall time"
    print(f"convarith {args.model}, batch {args.batch_size}, {mode}: {args.epochs} steady epochs "
          f"of {steps // args.epochs} steps, {total / args.epochs:.3f} s an epoch, "
          f"{total / steps * 1e3:.3f} ms a step ({timer})")
    for label, seconds in sorted(clock.seconds.items(), key=lambda item: -item[1]):
        print(f"  {label:34s} {seconds / steps * 1e3:7.3f} ms a step "
              f"({clock.calls[label] / steps:.0f} calls) {seconds / total:6.1%}")
    rest = total - sum(clock.seconds.values())
    print(f"  {'fit loop outside the steps':34s} {rest / steps * 1e3:7.3f} ms a step "
          f"{rest / total:6.1%}")


def torch_fit(initial, data, args, clock, ours=None):
    """PyTorch's version of the model from the same initial weights; ``(accuracy, wall, cpu)``
    or ``None`` when PyTorch is missing. Each convolution pads its input by the per-side
    padding of convarith's resolved spec (``F.pad``), so Keras's "same" with strides (one
    more cell at the end) is PyTorch's too."""
    try:
        import torch
    except ImportError:
        return None
    x_train, x_test, y_train, y_test = data
    ours = ours if ours is not None else build_ours(args)
    weights = [torch.from_numpy(a.copy()) for a in initial]
    convs, pads = [], []
    for index, c in enumerate(conv_settings(args)):
        rank = c["rank"]
        kernel, bias = weights[2 * index], weights[2 * index + 1]
        conv = (torch.nn.Conv1d if rank == 1 else torch.nn.Conv2d)(
            kernel.shape[-2], c["filters"], c["kernel_size"], stride=c["strides"], padding=0,
            dilation=c["dilation_rate"])
        with torch.no_grad():
            conv.weight.copy_(kernel.permute(rank + 1, rank, *range(rank)))
            conv.bias.copy_(bias)
        convs.append(conv)
        # F.pad lists the last axis first
        pads.append(tuple(p for lo_hi in reversed(ours.layers[index].resolved().padding)
                          for p in lo_hi))
    w, b = weights[-2], weights[-1]
    dense = torch.nn.Linear(w.shape[0], w.shape[1])
    with torch.no_grad():
        dense.weight.copy_(w.T)
        dense.bias.copy_(b)
    rank = conv_settings(args)[0]["rank"]
    channels_last = (0, *range(2, rank + 2), 1)

    def forward(x):
        for conv, pad in zip(convs, pads):
            x = torch.relu(conv(torch.nn.functional.pad(x, pad) if any(pad) else x))
        return dense(x.permute(*channels_last).flatten(1))  # Keras flattens channels-last

    params = [p for conv in convs for p in conv.parameters()] + [*dense.parameters()]
    optimizer = torch.optim.Adam(params, lr=args.learning_rate)
    channels_first = (0, rank + 1, *range(1, rank + 1))
    xt = torch.from_numpy(x_train.astype("float32")).reshape(
        -1, *input_shape(args)).permute(*channels_first).contiguous()
    yt = torch.from_numpy(y_train.astype("int64"))
    generator = torch.Generator().manual_seed(args.seed)
    torch.set_num_threads(1 if args.one_thread else os.cpu_count() or 1)
    start, cpu = time.perf_counter(), time.process_time()
    clock.mark()
    for _ in range(args.epochs):
        order = torch.randperm(len(xt), generator=generator)
        for first in range(0, len(xt), args.batch_size):
            batch = order[first:first + args.batch_size]
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(forward(xt[batch]), yt[batch])
            loss.backward()
            optimizer.step()
        clock.mark()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    with torch.no_grad():
        xe = torch.from_numpy(x_test.astype("float32")).reshape(
            -1, *input_shape(args)).permute(*channels_first).contiguous()
        accuracy = float((forward(xe).argmax(1).numpy() == y_test).mean())
    return accuracy, wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("padding", "strides", "dilation", "epochs", "batch_size", "filters", "size",
                 "learning_rate", "seed"):
        default = DEFAULTS[name]
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    parser.add_argument("--model", choices=sorted(MODELS), default="lesson",
                        help="lesson: convarith train's model (with --padding, --strides, "
                        "--dilation, --filters); deep: four 3x3 'same' convolutions, two of "
                        "stride 2 (32, 32, 64, 64 filters); conv1d: three 1-D convolutions over "
                        "the image's rows (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=1, help="train each this many times")
    parser.add_argument("--profile", default=None, help="cProfile convarith's steady epochs into FILE")
    parser.add_argument("--convarith-threads", type=int, default=None,
                        help="also train convarith with the engine on this many threads "
                        "(engine.thread_limit; e.g. 1 on a machine whose cores are busy)")
    parser.add_argument("--one-thread", action="store_true",
                        help="run convarith, Keras-JAX and PyTorch on one thread each")
    parser.add_argument("--breakdown-threads", type=int, default=1,
                        help="with --breakdown: the engine's threads (above 1 the phases are "
                        "timed by the wall clock; default: %(default)s)")
    parser.add_argument("--breakdown", action="store_true",
                        help="train convarith alone (one thread) and print a step's time "
                        "by phase")
    args = parser.parse_args()
    if args.breakdown:
        breakdown(args)
        return
    if args.one_thread:
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CONVARITH_NUM_THREADS"):
            os.environ[name] = "1"
        # before JAX starts: XLA's CPU client computes on the calling thread
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen"
                                   "=false intra_op_parallelism_threads=1").strip()
        args.convarith_threads = None

    import keras

    data = load_data(args)
    x_train, x_test, y_train, y_test = data
    results: dict[str, list[tuple[float, float, float]]] = {"convarith": [], "keras (jax)": [],
                                                            "pytorch": []}
    limited = f"convarith {args.convarith_threads}T"
    if args.convarith_threads is not None:
        results[limited] = []
    clocks: dict[str, list[EpochClock]] = {name: [] for name in results}

    def train_ours(name: str, initial: Any, threads: int | None) -> None:
        model = build_ours(args)
        model.set_weights(initial)
        model.compile(nn.Adam(args.learning_rate), "sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        profiler = None
        if args.profile and name == "convarith":
            profiler = cProfile.Profile(time.thread_time) if args.one_thread else cProfile.Profile()
        clock = EpochClock()
        start, cpu = time.perf_counter(), time.process_time()
        clock.mark()
        with engine.thread_limit(threads) if threads else contextlib.nullcontext():
            model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                      verbose=0, callbacks=[convarith_clock_callback(clock, profiler)])
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
        results[name].append((model.evaluate(x_test, y_test)[1], seconds, cpu))
        clocks[name].append(clock)

    def train_keras(initial: Any) -> None:
        theirs = keras_model(keras, args)
        theirs.set_weights(initial)
        theirs.compile(keras.optimizers.Adam(args.learning_rate),
                       loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        clock = EpochClock()
        start, cpu = time.perf_counter(), time.process_time()
        clock.mark()
        theirs.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, verbose=0,
                   callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=clock.mark)])
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        accuracy = theirs.evaluate(x_test, y_test, verbose=0)[1]
        results["keras (jax)"].append((float(accuracy), seconds, cpu))
        clocks["keras (jax)"].append(clock)

    def train_torch(initial: Any, reference: Any) -> None:
        clock = EpochClock()
        run = torch_fit(initial, data, args, clock, reference)
        if run is not None:
            results["pytorch"].append(run)
            clocks["pytorch"].append(clock)

    for repeat in range(args.repeats):
        reference = build_ours(args)
        initial = reference.get_weights()
        runs: list[Callable[[], None]] = [
            functools.partial(train_ours, "convarith", initial,
                              1 if args.one_thread else None),
            functools.partial(train_keras, initial),
            functools.partial(train_torch, initial, reference)]
        if args.convarith_threads is not None:
            runs.insert(1, functools.partial(train_ours, limited, initial,
                                             args.convarith_threads))
        # each repeat starts with the next framework: none always runs first (or last) on
        # a machine whose load drifts
        shift = repeat % len(runs)
        for run in runs[shift:] + runs[:shift]:
            run()

    steps = -(-len(x_train) // args.batch_size)
    print(f"model {args.model}: digits {args.size}x{args.size}: {len(x_train)} train / "
          f"{len(x_test)} test; "
          f"padding={args.padding} strides={args.strides} dilation={args.dilation} "
          f"filters={args.filters} epochs={args.epochs} batch={args.batch_size} "
          f"({steps} steps an epoch) Adam lr={args.learning_rate}; cores={os.cpu_count()}"
          + ("; one thread each" if args.one_thread else ""))
    for name, runs_of in results.items():
        if not runs_of:
            print(f"{name:14s} not run (not installed, or no such padding)")
            continue
        accuracies = [a for a, _, _ in runs_of]
        times = [t for _, t, _ in runs_of]
        cpus = [c for _, _, c in runs_of]
        print(f"{name:14s} test accuracy {statistics.median(accuracies):.4f}  "
              f"train wall {statistics.median(times):6.2f}s cpu {statistics.median(cpus):6.2f}s "
              f"(median of {len(runs_of)}; all: {', '.join(f'{t:.2f}' for t in times)})")
    steady = {name: [c.steady() for c in runs_of] for name, runs_of in clocks.items() if runs_of}
    print(f"steady epoch (median of epochs 2..{args.epochs} in each run; median over the "
          f"{args.repeats} runs [lowest, highest]), ms an epoch and a step:")
    for name, per_run in steady.items():
        first = statistics.median(c.epochs()[0][0] for c in clocks[name])
        walls, cpus = [w for w, _ in per_run], [c for _, c in per_run]
        print(f"  {name:14s} wall {spread(walls, 1e3)} ({statistics.median(walls) / steps * 1e3:.2f}"
              f" a step)  cpu {spread(cpus, 1e3)}   first epoch wall {first:5.2f}s")
    print("ours / theirs, run by run (each run's steady epochs; median [lowest, highest]):")
    for ours in [name for name in steady if name.startswith("convarith")]:
        for name in ("keras (jax)", "pytorch"):
            if name in steady:
                pairs = list(zip(steady[ours], steady[name]))
                wall = [a[0] / b[0] for a, b in pairs]
                cpu = [a[1] / b[1] for a, b in pairs]
                print(f"  {ours} / {name}: steady epoch wall {spread(wall)}  "
                      f"cpu {spread(cpu)}")


def spread(values: list[float], scale: float = 1.0) -> str:
    """``median [lowest, highest]`` of ``values`` times ``scale``.

    >>> spread([0.1, 0.3, 0.2], 1e3)
    '200.0 [100.0, 300.0]'
    """
    digits = 1 if scale > 1 else 2
    return (f"{statistics.median(values) * scale:.{digits}f} [{min(values) * scale:.{digits}f}, "
            f"{max(values) * scale:.{digits}f}]")

if __name__ == "__main__":
    main()
