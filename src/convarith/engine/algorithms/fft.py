"""Large kernels by FFT: products per frequency instead of per tap.

A stride-1 convolution (a correlation) of a padded input of size ``P`` is,
away from the first ``K_eff - 1`` cells where the circular version wraps,
``irfft(rfft(x) · conj(rfft(k)))``: per frequency, one ``(N × C) @ (C × F)``
complex product, however many taps the kernel has. Dilation is a kernel with
zeros between its taps (free in the frequency domain). Output channels are
done in blocks so the transformed kernel stays small.

It pays only for very large kernels: the transforms cost ``O(P log P)`` per
channel (and per channel *pair* for the kernel) where the per-tap method costs
``O(P)`` per tap and channel pair. Measured, it loses to :mod:`.flat_rows`
up to 15×15 kernels on small batches (see :func:`cost`), so the dispatcher
picks it only beyond; ``python -m convarith.bench`` never uses it.

Examples
--------
>>> import numpy as np
>>> xp = np.arange(8.0).reshape(1, 8, 1)
>>> direct(xp, np.ones((3, 1, 1)), (1,), (1,), 1, (6,))[0, :, 0]
array([ 3.,  6.,  9., 12., 15., 18.])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..dispatch import ConvProblem, Requirements, register_algorithm
from ._threads import run_chunks

__all__ = ["direct", "applies", "cost", "value_gain", "MIN_TAPS"]

#: Fewest kernel taps (after dilation, per image) for which FFT is considered.
MIN_TAPS = 49

#: Bytes of transformed kernel held at once (output channels are blocked to fit).
KERNEL_BLOCK_BYTES = 16 << 20


def _complex(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.complex64 if dtype == np.float32 else np.complex128)


def direct(
    xp: np.ndarray,
    kernel: np.ndarray,
    strides: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    out_size: Sequence[int],
    *,
    threads: int | None = None,
) -> np.ndarray:
    """Stride-1, one-group convolution by real FFTs (the dispatch contract).

    Examples
    --------
    >>> xp = np.ones((1, 6, 6, 2), np.float32)
    >>> y = direct(xp, np.ones((3, 3, 2, 1), np.float32), (1, 1), (1, 1), 1, (4, 4))
    >>> bool(np.allclose(y, 18.0)), y.dtype
    (True, dtype('float32'))
    """
    if groups != 1 or any(s != 1 for s in strides):
        raise ValueError(
            f"fft needs stride 1 and groups=1, got strides {tuple(strides)}, groups {groups}"
        )
    rank = len(out_size)
    n, *padded, c = xp.shape
    f = kernel.shape[-1]
    spectrum_dtype = _complex(xp.dtype)
    # the spectrum of every image, frequencies first: (freqs, N, C)
    freq_shape = (*padded[:-1], padded[-1] // 2 + 1)
    freqs = math.prod(freq_shape)
    spectra = np.empty((freqs, n, c), spectrum_dtype)

    def forward(first: int, last: int) -> None:
        for image in range(first, last):
            spectrum = np.fft.rfftn(xp[image], s=padded, axes=tuple(range(rank)))
            spectra[:, image] = spectrum.reshape(freqs, c)

    flops = 5.0 * xp.size * math.log2(max(2, math.prod(padded)))
    run_chunks(forward, n, 1, threads=threads, flops=flops)
    block = max(1, KERNEL_BLOCK_BYTES // max(1, freqs * c * spectrum_dtype.itemsize))
    y = np.empty((n, *out_size, f), xp.dtype)
    every_dth = tuple(slice(None, None, d) for d in dilation)
    for start in range(0, f, block):
        stop = min(f, start + block)
        width = stop - start
        spread = np.zeros((*padded, c, width), xp.dtype)
        spread[every_dth][
            tuple(slice(0, k) for k in kernel.shape[:rank])
        ] = kernel[..., start:stop]
        kernel_spectrum = np.fft.rfftn(spread, axes=tuple(range(rank))).reshape(freqs, c, width)
        del spread
        product = np.matmul(spectra, np.conj(kernel_spectrum).astype(spectrum_dtype))

        def inverse(first: int, last: int, product: np.ndarray = product,
                    start: int = start, stop: int = stop) -> None:
            for image in range(first, last):
                grid = product[:, image].reshape(*freq_shape, stop - start)
                full = np.fft.irfftn(grid, s=padded, axes=tuple(range(rank)))
                crop = tuple(slice(0, o) for o in out_size)
                y[(image,) + crop + (slice(start, stop),)] = full[crop]

        run_chunks(inverse, n, 1, threads=threads, flops=flops * width / c)
    return y


#: When FFT applies: stride 1, one group, at least :data:`MIN_TAPS` taps, float32 or float64.
applies = Requirements((
    ("stride 1", lambda p: all(s == 1 for s in p.strides)),
    ("groups=1", lambda p: p.groups == 1),
    (f"at least {MIN_TAPS} kernel taps", lambda p: math.prod(p.kernel_size) >= MIN_TAPS),
    ("float32 or float64",
     lambda p: np.dtype(p.dtype) in (np.dtype(np.float32), np.dtype(np.float64))),
))


def cost(problem: ConvProblem) -> float:
    """Estimated cost in :mod:`.flat_rows` units (``0.7 × flops`` there).

    Transforms: ``N·(C + F)`` real FFTs of the padded size plus ``C·F`` for
    the kernel, each about ``2.5 P log₂ P`` flops, weighted 70× (NumPy's FFT
    over strided axes against BLAS); products: ``8 N C F`` real flops per
    frequency. Calibrated on 2×64×64, C = F = 32 (CPU time, one thread):
    FFT / flat_rows measured 26.8 (5×5), 14.8 (7×7), 6.8 (11×11), 4.0 (15×15);
    the kernel's transforms dominate, so FFT wins only for very large kernels
    on large batches.
    """
    padded = problem.input_shape[1:-1]
    cells = math.prod(padded)
    n, c, f = problem.batch, problem.in_channels, problem.out_channels
    transforms = (n * (c + f) + c * f) * 2.5 * cells * math.log2(max(cells, 2))
    products = 8.0 * n * c * f * cells / 2
    return 0.7 * (70.0 * transforms + products)


def value_gain(problem: ConvProblem) -> float:
    """Bound on any intermediate value over ``max|x| · max|kernel|``: a transform of
    ``P`` cells grows a value at most ``P`` times (input, and the inverse before its
    ``1/P``), the kernel's at most its tap count, and the products sum ``C`` channels;
    ``P`` is taken as twice the input on every axis.

    >>> p = ConvProblem((1, 16, 4), (7, 4, 4), (1,), (1,), 1, (10,), np.dtype("float32"))
    >>> value_gain(p)
    28672.0
    """
    cells = float(math.prod(2 * n for n in problem.input_shape[1:-1]))
    return problem.in_channels * cells * cells * math.prod(problem.kernel_size)


register_algorithm("fft", direct, applies=applies, cost=cost, value_gain=value_gain)
