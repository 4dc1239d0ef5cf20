"""The compiled batched transposes (:mod:`convarith.engine.algorithms._llvm_transpose`)
and what runs on them: the kernel flip of every input gradient (``core.flip_swap``) and
the channels-first layouts' conversions, each against its definition written with
NumPy's own transposes, on the native vector target and on AVX2."""

from __future__ import annotations

import numpy as np
import pytest

from convarith import ConvSpec
from convarith.engine import conv, conv_vjp, core
from convarith.engine.algorithms import _llvm, _llvm_transpose

ISAS = ["", "avx2"]


def _compiled_here() -> bool:
    return _llvm_transpose.transposer(np.float32, 4) is not None


@pytest.fixture(params=ISAS)
def isa(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param:
        if not _llvm.target_named(request.param).runs_here:
            pytest.skip(f"{request.param} does not run here")
        monkeypatch.setenv(_llvm.ISA_VARIABLE, request.param)
    return str(request.param)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """What each ``transpose_into`` call of ``core`` answered (True: the compiled one ran)."""
    answers: list[bool] = []
    original = core.transpose_into

    def counted(*args: object, **kwargs: object) -> bool:
        answers.append(original(*args, **kwargs))  # type: ignore[arg-type]
        return answers[-1]

    monkeypatch.setattr(core, "transpose_into", counted)
    return answers


@pytest.mark.parametrize("seed", range(40))
def test_batched_transposes_match_numpy(seed: int, isa: str) -> None:
    if not _compiled_here():
        pytest.skip("no compiled kernels here")
    rng = np.random.default_rng(4100 + seed)
    dtype = np.dtype(rng.choice([np.float32, np.float64]))
    rows, cols = (int(v) for v in rng.integers(1, 75, 2))
    n1, n2 = (int(v) for v in rng.integers(1, 4, 2))
    src = rng.standard_normal((n1, n2, rows, cols)).astype(dtype)
    backwards = bool(seed % 2)  # the outer matrices read last to first
    dst = np.full((n1, n2, cols, rows), np.nan, dtype)
    start = (n1 - 1) * n2 * rows * cols if backwards else 0
    outer = (n1, -n2 * rows * cols if backwards else n2 * rows * cols, n2 * cols * rows)
    done = _llvm_transpose.transpose_into(dst, src, start, outer, (n2, rows * cols, cols * rows),
                                          rows, cols, cols, rows)
    context = f"seed {4100 + seed}: {dtype}, {(n1, n2, rows, cols)}, backwards {backwards}, isa {isa!r}"
    assert done == (_llvm_transpose.block_size(dtype, rows, cols) > 0), context
    if done:
        expected = np.swapaxes(src[::-1] if backwards else src, -1, -2)
        np.testing.assert_array_equal(dst, expected, err_msg=context)


@pytest.mark.parametrize("seed", range(16))
def test_flip_swap_of_wide_groups_matches_its_definition(seed: int, isa: str,
                                                         calls: list[bool]) -> None:
    rng = np.random.default_rng(4200 + seed)
    rank = int(rng.integers(1, 4))
    groups = int(rng.choice([1, 2, 3]))
    taps = tuple(int(k) for k in rng.integers(1, 4, rank))
    group_in, group_out = (int(v) for v in rng.integers(16, 70, 2))
    dtype = np.float64 if seed % 2 else np.float32
    kernel = rng.standard_normal((*taps, group_in, groups * group_out)).astype(dtype)
    flipped = np.flip(kernel, axis=tuple(range(rank)))
    expected = np.concatenate([
        np.swapaxes(flipped[..., g * group_out:(g + 1) * group_out], -1, -2)
        for g in range(groups)], axis=-1)
    swapped = core.flip_swap(kernel, groups)
    context = f"seed {4200 + seed}: {kernel.shape}, {groups} groups, isa {isa!r}"
    np.testing.assert_array_equal(swapped, expected, err_msg=context)
    np.testing.assert_array_equal(core.flip_swap(swapped, groups), kernel, err_msg=context)
    if _compiled_here():
        assert calls and all(calls), context  # (sides of 16 or more: whole vectors)


def test_flip_swap_of_narrow_groups_keeps_numpy(calls: list[bool]) -> None:
    kernel = np.arange(3 * 3 * 4 * 128, dtype=np.float32).reshape(3, 3, 4, 128)
    swapped = core.flip_swap(kernel, 32)
    assert calls == [False] or not calls
    np.testing.assert_array_equal(core.flip_swap(swapped, 32), kernel)


@pytest.mark.parametrize("seed", range(24))
def test_channel_layouts_match_moveaxis(seed: int, isa: str) -> None:
    rng = np.random.default_rng(4300 + seed)
    rank = int(rng.integers(1, 4))
    shape = (int(rng.integers(1, 4)), int(rng.integers(1, 70)),
             *(int(v) for v in rng.integers(1, 12, rank)))
    dtype = np.dtype(rng.choice([np.float32, np.float64, np.float16]))
    x = rng.standard_normal(shape).astype(dtype)
    if seed % 5 == 0:
        x = x[..., ::-1]  # not contiguous: NumPy's copy
    for target in (np.float32, np.float64):
        last = core.to_channels_last(x, target)
        assert last.flags.c_contiguous and last.dtype == target
        np.testing.assert_array_equal(last, np.moveaxis(x, 1, -1).astype(target),
                                      err_msg=f"seed {4300 + seed}")
        first = core.to_channels_first(last, target)
        assert first.flags.c_contiguous and first.dtype == target
        np.testing.assert_array_equal(first, x.astype(target), err_msg=f"seed {4300 + seed}")


@pytest.mark.parametrize("transposed", [False, True])
def test_channels_first_calls_equal_channels_last_ones(transposed: bool, isa: str) -> None:
    # the same computation either way: the layouts' conversions change no bit
    rng = np.random.default_rng(4400 + transposed)
    x = rng.standard_normal((3, 40, 9, 11)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 40, 48) if not transposed else (3, 3, 48, 40)
                                 ).astype(np.float32)
    first = ConvSpec(3, filters=48, strides=2, padding="same", transposed=transposed,
                     data_format="channels_first")
    last = ConvSpec(3, filters=48, strides=2, padding="same", transposed=transposed)
    x_last = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    y = conv(x, kernel, first)
    y_last = conv(x_last, kernel, last)
    np.testing.assert_array_equal(y, np.moveaxis(y_last, -1, 1))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dk, _ = conv_vjp(x, kernel, first, dy)
    dx_last, dk_last, _ = conv_vjp(x_last, kernel, last, np.ascontiguousarray(
        np.moveaxis(dy, 1, -1)))
    np.testing.assert_array_equal(dx, np.moveaxis(dx_last, -1, 1))
    np.testing.assert_array_equal(dk, dk_last)


def test_module_compiles_for_avx2_avx512_and_neon() -> None:
    if _llvm._llvm() is None:
        pytest.skip("no llvmlite (or CONVARITH_JIT=0)")
    for name in ("avx2", "avx512", "neon"):
        target = _llvm.target_named(name)
        for dtype in (np.float32, np.float64):
            lanes = target.width(dtype)
            for size in {lanes, max(2, lanes // 2)}:
                assert "drive" in _llvm.ir_assembly(_llvm_transpose.module_ir(dtype, size), target)


@pytest.mark.parametrize("size", [0, 1, 3, 12])
def test_block_sizes_are_powers_of_two(size: int) -> None:
    with pytest.raises(ValueError, match="size must be a power of two"):
        _llvm_transpose.module_ir(np.float32, size)


@pytest.mark.parametrize("channels", [1, 2, 3, 6, 7])
def test_few_channels_go_plane_by_plane(channels: int) -> None:
    rng = np.random.default_rng(4500 + channels)
    x = rng.standard_normal((2, channels, 5, 7)).astype(np.float16)
    last = core.to_channels_last(x, np.float32)
    assert last.flags.c_contiguous and last.dtype == np.float32
    np.testing.assert_array_equal(last, np.moveaxis(x, 1, -1).astype(np.float32))


def test_channels_last_views_of_channels_first_data(isa: str, calls: list[bool]) -> None:
    # a Keras-style layer of channels-first data hands the engine np.moveaxis(x, 1, -1)
    rng = np.random.default_rng(4600)
    x_first = rng.standard_normal((2, 32, 9, 10)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 32, 24)).astype(np.float32)
    spec = ConvSpec(3, filters=24, padding="same")
    view = np.moveaxis(x_first, 1, -1)
    copy = np.ascontiguousarray(view)
    y = conv(view, kernel, spec)
    np.testing.assert_array_equal(y, conv(copy, kernel, spec))
    dy_first = rng.standard_normal((2, 24, 9, 10)).astype(np.float32)
    dx, dk, _ = conv_vjp(view, kernel, spec, np.moveaxis(dy_first, 1, -1))
    dx_copy, dk_copy, _ = conv_vjp(copy, kernel, spec, np.ascontiguousarray(
        np.moveaxis(dy_first, 1, -1)))
    np.testing.assert_array_equal(dx, dx_copy)
    np.testing.assert_array_equal(dk, dk_copy)
    if _compiled_here():
        assert True in calls  # the views went through the compiled transposes
