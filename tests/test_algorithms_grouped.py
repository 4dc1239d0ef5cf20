"""Grouped convolutions on the compiled kernels against the float64 slow reference.

Random group counts, group widths (below, at and above a vector's lanes, so the
groups' vectors spill into their neighbours' channels), kernels, strides,
dilation and padding; forward (``register_tiles``, every group in one call;
``register_tiles_grouped``'s shuffling and interleaved kernels) and the kernel
gradient (``register_tiles_grouped``), float32 and float64. Each case
prints its seed on failure. Runs on whatever vector ISA is in force
(``CONVARITH_VECTOR_ISA=avx2`` forces the AVX2 kernels).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from _helpers import reference_direct, reference_weight_grad, relative_error
from convarith.engine.algorithms import _llvm

pytestmark = pytest.mark.skipif(not _llvm.available(), reason="no compiled kernels here")

CASES = 12 if os.environ.get("CI") == "true" else 60


def _random_case(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    rank = int(rng.choice([1, 2, 2, 2]))
    groups = int(rng.choice([2, 3, 4, 8, 16, 32, 64]))
    group_in = int(rng.choice([2, 3, 4, 5, 8, 16]))
    group_out = int(rng.choice([1, 2, 4, 5, 8, 12, 16, 24, 32]))
    if rng.random() < 0.5:  # as many outputs as inputs: the shuffling kernels' groups
        group_in = group_out = int(rng.choice([2, 4, 8]))
        groups = int(rng.choice([4, 8, 16, 32]))
    kernel_size = tuple(int(rng.integers(1, 6)) for _ in range(rank))
    strides = tuple(int(rng.integers(1, 4)) for _ in range(rank))
    dilation = tuple(int(rng.integers(1, 3)) for _ in range(rank))
    pads = tuple((int(rng.integers(0, 3)), int(rng.integers(0, 3))) for _ in range(rank))
    reach = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation)]
    size = tuple(max(e - lo - hi, 1) + int(rng.integers(0, 12))
                 for e, (lo, hi) in zip(reach, pads))
    out_size = tuple((n + lo + hi - e) // s + 1
                     for n, (lo, hi), e, s in zip(size, pads, reach, strides))
    batch = int(rng.integers(1, 4))
    dtype = np.float32 if rng.random() < 0.7 else np.float64
    x = rng.standard_normal((batch, *size, groups * group_in)).astype(dtype)
    kernel = rng.standard_normal((*kernel_size, group_in, groups * group_out)).astype(dtype)
    return dict(x=x, kernel=kernel, strides=strides, dilation=dilation, pads=pads,
                groups=groups, out_size=out_size, dtype=dtype)


@pytest.mark.parametrize("seed", range(CASES))
def test_grouped_forward_and_kernel_gradient_match_the_reference(seed: int) -> None:
    from convarith.engine.algorithms import grouped_tiles, register_tiles

    case = _random_case(seed)
    x, kernel, groups = case["x"], case["kernel"], case["groups"]
    strides, dilation, pads, out_size = (case["strides"], case["dilation"], case["pads"],
                                         case["out_size"])
    xp = np.pad(x, ((0, 0), *pads, (0, 0)))
    tolerance = 1e-5 if case["dtype"] == np.float32 else 1e-10
    where = (f"seed {seed}: x {x.shape}, kernel {kernel.shape}, groups {groups}, strides "
             f"{strides}, dilation {dilation}, padding {pads}, {np.dtype(case['dtype']).name}")
    expected = reference_direct(xp, kernel, strides, dilation, groups, out_size)
    for module in (register_tiles, grouped_tiles):
        y = module.direct(x, kernel, strides, dilation, groups, out_size, padding=pads)
        assert y.shape == expected.shape and y.dtype == x.dtype, (module.__name__, where)
        assert relative_error(y, expected) <= tolerance, (module.__name__, where)
    dy = np.random.default_rng(seed + 1).standard_normal(expected.shape).astype(x.dtype)
    dk = grouped_tiles.weight_grad(xp, dy, kernel.shape[:-2], strides, dilation, groups)
    expected_dk = reference_weight_grad(xp.astype(np.float64), dy.astype(np.float64),
                                        kernel.shape[:-2], strides, dilation, groups)
    assert dk.shape == kernel.shape and dk.dtype == x.dtype, where
    assert relative_error(dk, expected_dk) <= tolerance, where


def test_kernel_gradient_sums_every_threads_share() -> None:
    """Shares of output cells summed by several threads add up to one sum."""
    from convarith.engine.algorithms import grouped_tiles

    rng = np.random.default_rng(5)
    xp = rng.standard_normal((3, 30, 30, 64)).astype(np.float32)
    dy = rng.standard_normal((3, 28, 28, 64)).astype(np.float32)
    expected = reference_weight_grad(xp.astype(np.float64), dy.astype(np.float64), (3, 3),
                                     (1, 1), (1, 1), 16)
    for threads in (1, 2, 3):
        dk = grouped_tiles.weight_grad(xp, dy, (3, 3), (1, 1), (1, 1), 16, threads=threads)
        assert relative_error(dk, expected) <= 1e-5, threads


def test_non_finite_input_reaches_only_its_own_group() -> None:
    """A group's vectors spill into the next group's channels; a NaN there must not."""
    from convarith.engine.algorithms import grouped_tiles, register_tiles

    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 9, 9, 32)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 4, 32)).astype(np.float32)
    x[0, 4, 4, 1] = np.nan  # group 0 (channels 0-3)
    for direct in (register_tiles.direct, grouped_tiles.direct):
        y = direct(x, kernel, (1, 1), (1, 1), 8, (7, 7))
        assert np.isnan(y[..., :4]).any() and not np.isnan(y[..., 4:]).any(), direct
    # groups of half a vector: two groups share each vector
    half = _llvm.vector_width(np.float32) // 2
    wide = rng.standard_normal((1, 9, 9, 4 * half)).astype(np.float32)
    wide[0, 4, 4, half + 1] = np.nan  # group 1
    y = grouped_tiles.direct(wide, rng.standard_normal((3, 3, half, 4 * half)).astype(
        np.float32), (1, 1), (1, 1), 4, (7, 7))
    nan = np.isnan(y).any(axis=(0, 1, 2))
    assert nan[half:2 * half].all() and not nan[:half].any() and not nan[2 * half:].any()
    dy = rng.standard_normal((1, 7, 7, 32)).astype(np.float32)
    dk = grouped_tiles.weight_grad(x, dy, (3, 3), (1, 1), (1, 1), 8)
    assert np.isnan(dk[..., :4]).any() and not np.isnan(dk[..., 4:]).any()


@pytest.mark.parametrize("isa", ["avx2", "avx512", "neon"])
def test_the_shuffling_kernels_compile_for_every_instruction_set(isa: str) -> None:
    """The grouped kernels' IR compiles for each target, also those this CPU lacks."""
    target = _llvm.target_named(isa)
    for dtype in (np.float32, np.float64):
        text = _llvm.grouped_assembly(target, dtype, 1, 2)
        assert "drive" in text


@pytest.mark.parametrize("isa", ["avx2", "avx512", "neon"])
def test_the_interleaved_kernels_compile_for_every_instruction_set(isa: str) -> None:
    """The interleaved kernels' IR compiles for each target, also those this CPU lacks."""
    llvm = _llvm._llvm()
    target = _llvm.target_named(isa)
    for dtype in (np.float32, np.float64):
        width = target.width(dtype)
        ir = _llvm.interleaved_module_ir(dtype, 2, _llvm.block_rows(2, target), width, 2)
        with _llvm._LOCK:
            module = llvm.parse_assembly(ir)
            if target.triple:
                module.triple = target.triple
            module.verify()
            text = str(_llvm._machine(llvm, target).emit_assembly(module))
        assert "drive" in text


@pytest.mark.parametrize("seed", range(CASES // 3))
def test_groups_of_half_or_one_vector_match_the_reference(seed: int) -> None:
    """The interleaved kernels' layers: groups of half a vector's lanes or of one
    vector, as many outputs as inputs, several vectors of channels (also past one
    column block)."""
    from convarith.engine.algorithms import grouped_tiles
    from convarith.engine.dispatch import ConvProblem

    rng = np.random.default_rng(9000 + seed)
    dtype = np.float32 if rng.random() < 0.7 else np.float64
    width = _llvm.vector_width(dtype)
    group = width // int(rng.choice([1, 2]))
    groups = 2 * int(rng.choice([1, 2, 3, 5, 9]))
    rank = int(rng.choice([1, 2, 2]))
    kernel_size = tuple(int(rng.integers(1, 5)) for _ in range(rank))
    strides = tuple(int(rng.integers(1, 3)) for _ in range(rank))
    dilation = tuple(int(rng.integers(1, 3)) for _ in range(rank))
    pads = tuple((int(rng.integers(0, 3)), int(rng.integers(0, 3))) for _ in range(rank))
    reach = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation)]
    size = tuple(max(e - lo - hi, 1) + int(rng.integers(0, 10))
                 for e, (lo, hi) in zip(reach, pads))
    out_size = tuple((n + lo + hi - e) // s + 1
                     for n, (lo, hi), e, s in zip(size, pads, reach, strides))
    x = rng.standard_normal((int(rng.integers(1, 3)), *size, groups * group)).astype(dtype)
    kernel = rng.standard_normal((*kernel_size, group, groups * group)).astype(dtype)
    where = (f"seed {9000 + seed}: x {x.shape}, kernel {kernel.shape}, groups {groups}, "
             f"strides {strides}, dilation {dilation}, padding {pads}")
    xp = np.pad(x, ((0, 0), *pads, (0, 0)))
    problem = ConvProblem(xp.shape, kernel.shape, strides, dilation, groups, out_size,
                          np.dtype(dtype))
    assert grouped_tiles.interleaves(problem), where
    expected = reference_direct(xp, kernel, strides, dilation, groups, out_size)
    tolerance = 1e-5 if dtype == np.float32 else 1e-10
    y = grouped_tiles.direct(x, kernel, strides, dilation, groups, out_size, padding=pads)
    assert y.shape == expected.shape and y.dtype == x.dtype, where
    assert relative_error(y, expected) <= tolerance, where
    if rank == 2:  # the interleaved kernels themselves (also where shuffling ones run)
        y = grouped_tiles._interleaved(x, kernel, strides, dilation, list(pads), out_size,
                                       None)
        assert relative_error(y, expected) <= tolerance, where


def test_the_shuffling_kernels_apply_to_resnext_groups() -> None:
    """ResNeXt's 32 groups of 4 run without merging groups (no block-diagonal zeros)."""
    from convarith.engine.algorithms import grouped_tiles
    from convarith.engine.dispatch import ConvProblem

    problem = ConvProblem((1, 58, 58, 128), (3, 3, 4, 128), (1, 1), (1, 1), 32, (56, 56),
                          np.dtype(np.float32))
    assert grouped_tiles.shuffles(problem)
    assert grouped_tiles.cost(problem) < grouped_tiles.tiles_cost(problem)


@pytest.mark.parametrize("seed", range(CASES // 2))
def test_grouped_strided_transposed_matches_the_reference(seed: int) -> None:
    """``register_tiles_phases`` with groups (a strided layer's input gradient)."""
    from _helpers import reference_scatter
    from convarith.engine.algorithms import register_tiles

    rng = np.random.default_rng(7000 + seed)
    rank = int(rng.choice([1, 2, 2]))
    groups = int(rng.choice([2, 3, 4, 8, 32]))
    group_in = int(rng.choice([2, 4, 8]))
    group_out = int(rng.choice([2, 4, 5, 8, 16]))
    kernel_size = tuple(int(rng.integers(1, 5)) for _ in range(rank))
    strides = tuple(int(rng.integers(1, 4)) for _ in range(rank))
    if max(strides) == 1:
        strides = (2, *strides[1:])
    dilation = tuple(int(rng.integers(1, 3)) for _ in range(rank))
    padding = tuple((int(rng.integers(-1, d * (k - 1) + 1)), int(rng.integers(-1, d * (k - 1) + 1)))
                    for k, d in zip(kernel_size, dilation))
    size = tuple(int(rng.integers(2, 7)) for _ in range(rank))
    dtype = np.float32 if rng.random() < 0.7 else np.float64
    x = rng.standard_normal((int(rng.integers(1, 3)), *size, groups * group_in)).astype(dtype)
    kernel = rng.standard_normal((*kernel_size, group_out, groups * group_in)).astype(dtype)
    where = (f"seed {7000 + seed}: x {x.shape}, kernel {kernel.shape}, groups {groups}, "
             f"strides {strides}, dilation {dilation}, padding {padding}")
    out = [(i - 1) * s + 1 + lo + hi - d * (k - 1)
           for i, s, (lo, hi), d, k in zip(size, strides, padding, dilation, kernel_size)]
    if min(out) < 1:
        pytest.skip(f"empty output ({where})")
    expected = reference_scatter(x, kernel, strides, dilation, groups, padding)
    y = register_tiles.transposed(x, kernel, strides, dilation, groups, padding,
                                  expected.shape[1:-1])
    assert y.shape == expected.shape and y.dtype == x.dtype, where
    tolerance = 1e-5 if dtype == np.float32 else 1e-10
    assert relative_error(y, expected) <= tolerance, where
