"""Strided 2-D transposed convolutions as one Winograd 3×3 convolution (sub-pixel).

A transposed convolution with stride ``S`` sends input cell ``i`` through tap
``t`` to output cell ``o = i·S + t - P`` (``P = K - 1 - lo``, ``lo`` the low
padding of the zero-inserted grid). Output cell ``o = m·S + p`` of phase
``p`` therefore reads input cells ``m + δ`` through taps
``t = p + P - S·δ``: every phase is an ordinary stride-1 correlation of the
input, and all phases read the same few offsets ``δ``. With at most three
offsets per axis (``K = 4, S = 2``, the usual up-sampling layer, has
exactly three), all ``S0·S1`` phases together are *one* 3×3 convolution of
the input whose ``S0·S1·F`` outputs are the phases' channels (the taps a
phase does not use are zero), followed by depth-to-space: the "sub-pixel"
convolution. That 3×3 convolution runs as Winograd F(4×4, 3×3), whose
output transform writes each phase's channels straight to their interleaved
place.

Cost. For ``K = 4, S = 2`` the 3×3 form multiplies ``9·4 = 36`` taps per
input cell and channel pair where the transposed convolution has 16, but
Winograd F(4×4, 3×3) does ``36 / 16`` of the 3×3 form's multiplies: 56 % of
the real FLOPs in all. Its float32 error is Winograd's (see
:mod:`.winograd`).

Examples
--------
>>> import numpy as np
>>> from convarith.engine.algorithms import col2im
>>> rng = np.random.default_rng(0)
>>> x = rng.standard_normal((1, 5, 6, 32))
>>> k = rng.standard_normal((4, 4, 16, 32))   # (*K, F, C)
>>> pads = ((2, 2), (2, 2))                   # Keras "same" for K = 4, S = 2
>>> y = transposed(x, k, (2, 2), (1, 1), 1, pads, (10, 12))
>>> y.shape
(1, 10, 12, 16)
>>> bool(np.allclose(y, col2im.transposed(x, k, (2, 2), (1, 1), 1, pads, (10, 12))))
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..dispatch import ConvProblem, register_algorithm
from . import winograd

__all__ = ["transposed", "applies", "cost", "union_kernel", "COST_SCALE"]


def _offsets(taps: int, stride: int, shift: int) -> tuple[int, int]:
    """First and last input offset ``δ`` any phase reads (``shift`` is ``P``)."""
    first = -((taps - 1 - shift) // stride)  # ceil((P - K + 1) / S), phase 0
    last = (stride - 1 + shift) // stride  # floor((S - 1 + P) / S), the last phase
    return first, last


def _widest(taps: int, stride: int) -> int:
    """The most offsets any padding gives (the count depends on ``P mod S`` only)."""
    return max(b - a + 1 for a, b in (_offsets(taps, stride, shift) for shift in range(stride)))


def union_kernel(kernel: np.ndarray, strides: Sequence[int], shifts: Sequence[int],
                 firsts: Sequence[int]) -> np.ndarray:
    """The 3×3 kernel ``(3, 3, C, S0·S1·F)`` of all phases of a ``(K0, K1, F, C)`` kernel.

    Column ``(p0·S1 + p1)·F + f`` at offset ``(j0, j1)`` is tap
    ``t = p + P - S·(first + j)`` per axis, or zero where that is outside the kernel.
    """
    k0, k1, f, c = kernel.shape
    s0, s1 = strides
    u = np.zeros((3, 3, c, s0, s1, f), kernel.dtype)
    for j0 in range(3):
        for p0 in range(s0):
            t0 = p0 + shifts[0] - s0 * (firsts[0] + j0)
            if not 0 <= t0 < k0:
                continue
            for j1 in range(3):
                for p1 in range(s1):
                    t1 = p1 + shifts[1] - s1 * (firsts[1] + j1)
                    if 0 <= t1 < k1:
                        u[j0, j1, :, p0, p1, :] = kernel[t0, t1].T
    return u.reshape(3, 3, c, s0 * s1 * f)


def transposed(
    x: np.ndarray,
    kernel: np.ndarray,
    strides: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    padding: Sequence[tuple[int, int]],
    out_size: Sequence[int],
    *,
    use_numba: bool | None = None,
) -> np.ndarray:
    """The ``kind="transposed"`` contract: ``x`` (N, H, W, C), kernel ``(K0, K1, F, C)``,
    ``padding`` that of the zero-inserted grid. ``use_numba`` is passed to
    :func:`.winograd.direct` (without numba the phases are interleaved after)."""
    if len(strides) != 2 or groups != 1 or tuple(dilation) != (1, 1):
        raise ValueError(
            f"subpixel needs a 2-D transposed convolution with groups=1 and no dilation, got "
            f"strides {tuple(strides)}, dilation {tuple(dilation)}, groups {groups}")
    taps = kernel.shape[:2]
    shifts = [k - 1 - lo for k, (lo, _) in zip(taps, padding)]
    out = list(out_size)
    ranges = [_offsets(k, s, p) for k, s, p in zip(taps, strides, shifts)]
    if any(last - first > 2 for first, last in ranges):
        raise ValueError(
            f"subpixel needs at most 3 input offsets per axis, kernel {tuple(taps)} with "
            f"strides {tuple(strides)} reads {[b - a + 1 for a, b in ranges]}")
    cells = [-(-o // s) for o, s in zip(out, strides)]  # output cells per phase
    firsts = [first for first, _ in ranges]
    # x_pad[m + j] = x[m + first + j]: the 3×3 convolution's input (negative pads crop)
    pads = tuple((-first, m + 2 - n + first) for first, m, n in zip(firsts, cells, x.shape[1:3]))
    u = union_kernel(kernel, strides, shifts, firsts)
    y = winograd.direct(x, u, (1, 1), (1, 1), 1, tuple(cells), padding=pads,
                        phases=(int(strides[0]), int(strides[1])), use_numba=use_numba)
    if y.shape[1:3] != tuple(out):
        y = np.ascontiguousarray(y[:, : out[0], : out[1]])
    return y


def _union_problem(problem: ConvProblem) -> ConvProblem:
    s0, s1 = problem.strides
    cells = tuple(-(-o // s) for o, s in zip(problem.out_size, problem.strides))
    outputs = s0 * s1 * problem.kernel_shape[-2]
    return ConvProblem((problem.input_shape[0], cells[0] + 2, cells[1] + 2, problem.in_channels),
                       (3, 3, problem.in_channels, outputs), (1, 1), (1, 1), 1, cells,
                       problem.dtype)


def applies(problem: ConvProblem) -> bool:
    """2-D, strided, one group, no dilation, at most 3 offsets per axis, and
    enough channels for Winograd."""
    if (problem.rank != 2 or problem.groups != 1 or tuple(problem.dilation) != (1, 1)
            or math.prod(problem.strides) == 1):
        return False
    if any(_widest(k, s) > 3 for k, s in zip(problem.kernel_size, problem.strides)):
        return False
    union = _union_problem(problem)
    return winograd.applies(union) and winograd.cost(union) < math.inf


#: Scale from Winograd's cost of the 3×3 form to :mod:`.col2im`'s units. Measured
#: against col2im on 15 "same" layers (N = 1–16, 7²–56², 32–256 channels,
#: K = 2–6, S = 2–3; two cores): time ratio / cost ratio ranged 0.30–0.84 (the
#: higher on small images with many channels, where the kernel transform
#: dominates), median 0.45; with it the choice was right on 14 of 15 (the wrong one
#: 6 % slower).
COST_SCALE = 0.45


def cost(problem: ConvProblem) -> float:
    """:data:`COST_SCALE` × the Winograd cost of the 3×3 convolution it runs, with the
    constants :data:`COST_SCALE` was measured against (0.45 per FLOP, 0.55 on wide
    float32 layers, 8000 per channel pair); infinite where Winograd does not apply."""
    union = _union_problem(problem)
    if winograd.cost(union) == math.inf:
        return math.inf
    wide = np.dtype(union.dtype) == np.float32 and union.in_channels > winograd.F4_MAX_CHANNELS
    per_flop = 0.55 if wide else 0.45
    return COST_SCALE * (union.flops * per_flop + 8000.0 * union.in_channels * union.out_channels)


def value_gain(problem: ConvProblem) -> float:
    """Winograd's bound (:func:`.winograd.value_gain`) on the 3×3 convolution it runs."""
    return winograd.value_gain(_union_problem(problem))


register_algorithm("subpixel", transposed, applies=applies, cost=cost, kind="transposed",
                   value_gain=value_gain)
