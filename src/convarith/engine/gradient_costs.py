"""The weight gradient's own cost, for each algorithm that supplies one.

:func:`.dispatch.cheapest_weight_grad` ranks the algorithms that supply a
``weight_grad`` by the ``weight_grad_cost`` they register (default: their
forward ``cost``). A weight gradient has the forward pass's FLOPs but not its
shape of work: its products are ``(C × cells) @ (cells × F)``, small in ``C``
and ``F`` and long in the cells, so an algorithm's rank can differ from the
forward pass's (a first layer with one input channel: :mod:`.algorithms.depthwise`
runs the forward pass best and the weight gradient 2.4× slower than per-tap
products).

Units are the forward costs' (:mod:`.algorithms.flat_rows`' ``0.7 × FLOPs``):
here flat_rows' weight gradient of a large layer is ``0.7 × FLOPs``, about 13 ps
a FLOP on one AVX2 EPYC core, so a microsecond is about :data:`MICROSECOND`
units. Every constant below was fitted on one core (CPU time of one thread,
float32, busy machine, ``CONVARITH_JIT`` on and off giving the same ranks) on
3×3 "same" layers of 1 to 512 channels on 7² to 56² images, 1×1, 3×3 stride 2,
5×5 and the 3-channel stems (3×3 and 7×7 stride 2 on 224², 3×3 on 32²), batches
1 to 64 (``ms``, this algorithm against the others, are quoted in each function).

>>> from convarith.engine.dispatch import ConvProblem
>>> import numpy as np
>>> first = ConvProblem((32, 18, 18, 1), (3, 3, 1, 16), (1, 1), (1, 1), 1, (16, 16), np.dtype("float32"))
>>> per_tap_products(first) < depthwise(first)
True
"""

from __future__ import annotations

import math

from .dispatch import ConvProblem

__all__ = ["MICROSECOND", "VALUE_CHECK_COST", "WINOGRAD_MIN_CHANNELS", "TILES_PER_FLOP",
           "TILES_POINTWISE",
           "per_tap_products", "batch_as_channels", "flat_rows", "space_to_depth",
           "tap_columns", "winograd", "depthwise", "register_tiles"]

#: Cost units in one microsecond of one core (1 unit ≈ 18.5 ps on the AVX2 EPYC
#: where the constants were fitted).
MICROSECOND = 54_000.0


def per_tap_products(problem: ConvProblem) -> float:
    """:mod:`.algorithms.offset_gemm`: one product ``(C × cells) @ (cells × F)`` per tap,
    from a gathered copy of the tap's cells.

    ``(0.8 + 2.4 / C) × FLOPs`` and ~5 µs a tap: with one input channel each product
    is a row times a matrix (16²×1 -> 16, batch 32: 0.15 ms, 64 ps a FLOP; 3
    channels 45–116 ps; 16 and more 11–19 ps). Grouped, its einsums: 3× (depthwise
    3×3 160–310 ps a FLOP, :mod:`.algorithms.depthwise` 70–160; 32 groups of 4 on
    56², 2.6 ms against :mod:`.algorithms.grouped_tiles`' 1.2).
    """
    taps = math.prod(problem.kernel_size)
    per_flop = (0.8 + 2.4 / problem.kernel_shape[-2]) * (3.0 if problem.groups > 1 else 1.0)
    return problem.flops * per_flop + 5 * MICROSECOND * taps


def flat_rows(problem: ConvProblem) -> float:
    """:mod:`.algorithms.flat_rows`: per-tap products on the flat grid (one for 1×1).

    ``(0.7 + 3 / C) × FLOPs`` and ~35 µs: 16²×1 -> 16 at batch 8 0.065 ms
    (per-tap gathers 0.080, depthwise 0.10), at batch 32 0.17 (0.15, 0.37); 16
    channels on 16², batch 1 0.054 ms, batch 8 0.15; 128 -> 128 3×3 stride 2 on
    56² 3.2 ms (3.4); 1×1 256 -> 64 on 28², batch 32 12.4 ms (15.3); 3-channel
    stems 2–4.7 × 0.7 (space_to_depth 0.8–1.5 × 0.7).
    """
    per_flop = 0.7 + 3.0 / problem.kernel_shape[-2]
    return problem.flops * per_flop + 35 * MICROSECOND


def space_to_depth(problem: ConvProblem) -> float:
    """:mod:`.algorithms.space_to_depth`: one product ``columns @ dy`` per block of
    output cells, inner size the block's cells.

    Best with few input channels over many taps (the stems: 7×7 stride 2, 3 -> 64
    on 224², 3.5 ms against flat_rows' 5.0; 3×3 on 32², batch 64, 2.2 against
    3.6–7.3): ``1.0 × FLOPs``. Its products have as many cells as the image's
    output, so small outputs cost more: ``1.1 × (1 + 60 / cells) × FLOPs`` from 4
    channels (256 on 14² stride 2: 2.8 ms against flat_rows' 0.7 at batch 1, 81
    against 23 at batch 32). A single channel over few taps makes each product a
    row of ``taps`` outputs, short on small images: ``(1.9 + 1000 / cells) × FLOPs``
    (16²×1 -> 16, batch 32: 0.27 ms against per-tap products' 0.15; 28²×1 -> 32,
    batch 64: 0.95 against 1.10; 64²×1 -> 16, batch 32: 1.39 against 1.22). ~25 µs
    of fixed cost.
    """
    channels = problem.kernel_shape[-2]
    taps = math.prod(problem.kernel_size)
    cells = math.prod(problem.out_size)
    if channels * taps < 16:
        per_flop = 1.9 + 1000 / max(cells, 1)
    elif channels <= 3:
        per_flop = 1.0
    else:
        per_flop = 1.1 * (1 + 60 / max(cells, 1))
    return problem.flops * per_flop + 25 * MICROSECOND


#: Fewest input and output channels for which :func:`winograd` is not infinite, as for
#: its forward pass: with one channel the 36 transformed products are rows times
#: matrices (16²×1 -> 16, batch 32: 0.28 ms against per-tap products' 0.15); with 16,
#: the engine's call took as long as flat_rows' (16²×16 -> 16, batch 32: 0.95-1.0 ms
#: both), and the first call in a process compiles its kernels (3.4 s), which a model
#: with no wider layer would pay for nothing.
WINOGRAD_MIN_CHANNELS = 32

#: Cost of the engine's value check before a transforming weight gradient, per element
#: of ``x`` and ``dy``: two reductions of each, about 0.3 ns an element.
VALUE_CHECK_COST = 16.0


def winograd(problem: ConvProblem) -> float:
    """:mod:`.algorithms.winograd`: F(4×4, 3×3) backwards, 36 products over the tiles.

    The products are a quarter of the FLOPs, the transforms cost per tile and
    channel: against flat_rows' weight gradient, ``0.25 + 5 / min(C, F)`` times its
    cost, and ~150 µs for the 36 small products' set-up (alone, without the engine's
    checks: 16 channels on 16², batch 8 0.24 ms against 0.15, batch 32 0.65 against
    0.82, batch 64 0.84 against 1.6–1.9); 32 on 28², batch 16, 2.4 against 4.2, batch 64 8.0 against 18.9; 64 on
    16², batch 32, 3.7 against 10.4; 64 on 56², batch 8, 9.1 against 27. Where it
    runs flat_rows' (without numba's kernels, below 4 tiles per channel, not 3×3
    stride 1, groups), flat_rows' cost; infinite below :data:`WINOGRAD_MIN_CHANNELS`
    channels. Either way the engine first checks the values (``max`` and ``min`` of
    ``x`` and ``dy``, :func:`.dispatch.value_limits`): :data:`VALUE_CHECK_COST` an
    element (16 channels on 16², batch 32: 0.12 ms of the call's 0.81).
    """
    channels, filters = problem.kernel_shape[-2], problem.out_channels
    if min(channels, filters) < WINOGRAD_MIN_CHANNELS:
        return math.inf
    elements = math.prod(problem.input_shape) + problem.batch * math.prod(
        problem.out_size) * filters
    base = flat_rows(problem) + VALUE_CHECK_COST * elements
    if (problem.rank != 2 or tuple(problem.kernel_size) != (3, 3) or problem.groups != 1
            or any(s != 1 for s in problem.strides) or not _winograd_kernels()):
        return base
    tiles = problem.batch * math.prod(
        -(-o // (4 * d)) * d for o, d in zip(problem.out_size, problem.dilation))
    per_channel = tiles / max(channels, filters)
    if per_channel < 4:  # winograd.GRAD_MIN_TILES_PER_CHANNEL: flat_rows runs it
        return base
    return (flat_rows(problem) * (0.25 + 5 / min(channels, filters)) + 150 * MICROSECOND
            + VALUE_CHECK_COST * elements)


def _winograd_kernels() -> bool:
    from .algorithms import winograd as module

    return module._numba_kernels() is not None


def depthwise(problem: ConvProblem) -> float:
    """:mod:`.algorithms.depthwise`: per-channel products of inner size 1.

    ``8 × FLOPs`` with one input channel and several outputs (16²×1 -> 16: 0.10 ms
    at batch 8 against flat_rows' 0.065, 0.37 at batch 32 against per-tap products'
    0.15), best only on a single small image (0.027 ms at batch 1 against 0.045):
    ~20 µs of fixed cost where the others have 35–50. Depthwise layers (one
    input channel per group) keep the forward cost, ``0.1 × FLOPs``.
    """
    if problem.in_channels == 1 and problem.out_channels > 1:
        return problem.flops * 8.0 + 20 * MICROSECOND
    return problem.flops * 0.1



def batch_as_channels(problem: ConvProblem) -> float:
    """:mod:`.algorithms.batch_as_channels`: the weight gradient as one forward pass of
    :mod:`.algorithms.register_tiles`, the batch as its channels, ``x``'s channels as its
    images, ``dy``'s cells as its taps, the kernel's taps as its output cells.

    ``(0.5 + 1.5 / taps + 3 / N + 1.5 / C)`` times :func:`flat_rows`' cost: the compiled
    kernel's inner loop runs over the batch ``N`` and each image of it has ``taps``
    output cells (few: chunks of few cells), and it first copies ``x`` and ``dy`` into
    the swapped layouts. Its time over flat_rows' weight gradient (one thread, AVX2
    EPYC, busy machine): 3×3 16 -> 16 on 16², batch 32 0.67 on a padded ``x`` (0.59
    ms against 0.90), 0.67-0.70 with "same" padding through the engine (0.71-0.75 against
    1.07 ms: the zeros go in with the swapped copy, a compiled loop; the ``convarith
    train`` model's second layer), batch 8 1.55, batch 1 1.08; 3×3 64
    on 16², batch 32 0.76; 32 on 28², batch 16 0.77; 64 on 56², batch 8 0.88; 256 on
    14², batch 4 0.74; 512 on 7², batch 1 1.26; 5×5 16 on 16², batch 32 0.41; 3×3
    stride 2 64 on 28², batch 16 1.10 (per-tap products' 0.87: strides add 0.3); stems 3 -> 32 on 32², batch 32 1.23; one
    input channel 0.84 (per-tap products' 0.64); 1×1 64 -> 128 1.84.
    """
    taps = math.prod(problem.kernel_size)
    share = (0.5 + 1.5 / taps + 3 / problem.batch + 1.5 / problem.kernel_shape[-2]
             + (0.3 if any(s > 1 for s in problem.strides) else 0.0))
    return flat_rows(problem) * share


def tap_columns(problem: ConvProblem) -> float:
    """:mod:`.algorithms.tap_columns`: the taps' cells copied side by side (im2col), then
    one product ``columns.T @ dy``.

    ``1.55 × FLOPs`` (a product of ``taps·C`` rows: few), ``48`` units a copied value
    and ~13 µs. Against the others' weight gradients (one thread, AVX2 EPYC, busy
    machine, ms): 3×3 1 -> 16 on 16², batch 32 0.15 (per-tap products 0.21, flat_rows
    0.21, space_to_depth 0.28; the ``convarith train`` model's first layer), batch 8
    0.043 (0.080-0.10), batch 1 0.026 (depthwise 0.034); 1 -> 32 on 28², batch 64 1.16
    (space_to_depth 1.07, per-tap products 1.26); 1 -> 16 on 64², batch 32 2.1
    (space_to_depth 1.36); 3 -> 32 on 32², batch 32 2.7 (space_to_depth 1.19); 4 -> 64
    on 16², batch 4 0.138 (0.126-0.130).
    """
    taps = math.prod(problem.kernel_size)
    cells = problem.batch * math.prod(problem.out_size)
    return (1.55 * problem.flops + 48.0 * cells * taps * problem.kernel_shape[-2]
            + 13 * MICROSECOND)


#: :func:`register_tiles`' units a FLOP with 16 float32 lanes (AVX-512), many cells, wide
#: channels: about 10 ps a FLOP on one core of the AVX-512 EPYC (9.3-10.5 ps over 3×3 and
#: 5×5 layers of 32 to 512 channels, 1×1 of 64 to 256, batches 1-16, one thread, CPU
#: time), against flat_rows' weight gradient's 11-13 ps there.
TILES_PER_FLOP = 0.54

#: :func:`register_tiles`' factor for 1×1 kernels, whose weight gradient is one plain
#: product: 1.0-1.37 times pointwise_rows' (which :func:`flat_rows`' cost ranks) on
#: the networks suite's 1×1 layers at batch 16, two threads (ResNet-50's 256 -> 64 on
#: 28² 3.4 against 2.5 ms; EfficientNet-B0's 480 -> 80 on 7² 0.70 against flat_rows'
#: 0.37), 1.11 on one 28² image of 256 -> 64 on one thread.
TILES_POINTWISE = 1.4


def register_tiles(problem: ConvProblem) -> float:
    """:mod:`.algorithms.register_tiles`' weight gradient (the compiled kernels of
    :func:`.algorithms.grouped_tiles.weight_grad`, one group): the input read where it
    lies (window starts and the taps' strides), sums over the output cells in
    registers, blocks of cells kept in the cache for every tap.

    :data:`TILES_PER_FLOP` × FLOPs, times ``(16 / lanes)^0.6`` for narrower vectors
    (float32 lanes' worth: AVX2's 8 ran 11-18 ps a FLOP, 42 on 16 cells of 512
    channels), ``1 + 16 / cells`` for few output cells (one 7² image of 512 channels
    13.9 ps, 4² 19.8), ``1 + 3 / F`` and ``1 + 1.5 / C`` for few output and input
    channels (16 -> 16 12.4 ps; one input channel 32-33 ps, still 0.5-0.75 of the
    others' times: 3×3 1 -> 32 on 32 images of 28² 0.46 ms against tap_columns' 0.60;
    the stems' 3 channels 11-14 ps: 7×7 stride 2 on 8 images of 112² 5.3 ms against
    space_to_depth's 6.5), :data:`TILES_POINTWISE` for 1×1 kernels, up to 1.25 for a
    gradient of 32 MiB and more (each block of cells adds into all of it: 3×3 1024 on 16
    images of 7², two threads, 95 ms against batch_as_channels' 76; 512, 9 MiB, 1.04),
    and ~12 µs. One thread ran 16 of 20 layers faster than every
    other weight gradient here (3×3 64 on one 28² image 0.56 ms, flat_rows 0.72;
    128 on 4 images of 28² 8.6 against 11.7), not 512 channels on 7² and 4² (3.2
    against 2.7, 1.5 against 1.1). Its shares are whole images where ``x`` is padded,
    else runs of :data:`.algorithms.grouped_tiles.MIN_SHARE` cells: with fewer of them
    than workers it runs on fewer threads than the others, and costs that much more.
    Grouped layers: infinite (:mod:`.algorithms.grouped_tiles` supplies theirs).

    >>> from convarith.engine.dispatch import ConvProblem
    >>> import numpy as np
    >>> layer = ConvProblem((1, 30, 30, 64), (3, 3, 64, 64), (1, 1), (1, 1), 1, (28, 28), np.dtype("float32"))
    >>> wide = ConvProblem((1, 9, 9, 512), (3, 3, 512, 512), (1, 1), (1, 1), 1, (7, 7), np.dtype("float32"))
    >>> from convarith.engine.algorithms import _llvm, _threads
    >>> with _threads.thread_limit(1):
    ...     ranks = (register_tiles(layer) < flat_rows(layer), register_tiles(wide) < flat_rows(wide))
    >>> ranks if _llvm.vector_width(np.float32) == 16 else (True, False)
    (True, False)
    """
    from .algorithms import _llvm, _threads
    from .algorithms.grouped_tiles import MIN_SHARE

    width = _llvm.vector_width(problem.dtype)
    if problem.groups != 1 or width == 0:
        return math.inf
    lanes = width * problem.dtype.itemsize / 4
    channels, filters = problem.kernel_shape[-2], problem.out_channels
    cells = problem.batch * math.prod(problem.out_size)
    per_flop = (TILES_PER_FLOP * (16 / lanes) ** 0.6 * (1 + 16 / max(cells, 1))
                * (1 + 3 / filters) * (1 + 1.5 / channels))
    if math.prod(problem.kernel_size) == 1:
        per_flop *= TILES_POINTWISE
    # each block of cells adds into the whole gradient: past the caches, from memory
    per_flop *= 1 + 0.25 * min(1.0, problem.kernel_shape[-2] * filters * math.prod(
        problem.kernel_size) * problem.dtype.itemsize / (32 << 20))
    workers = _threads.worker_count()
    shares = max(1, min(problem.batch, cells // MIN_SHARE))
    return (problem.flops * per_flop * workers / min(workers, shares)
            + 12 * MICROSECOND)
