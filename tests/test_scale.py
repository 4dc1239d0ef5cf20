"""convarith.scale: tiled Dask convolutions equal the in-memory engine for every spec."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from _helpers import relative_error  # noqa: E402
from convarith import ConvSpec  # noqa: E402
from convarith.engine import conv as engine_conv  # noqa: E402
from convarith.scale import ChunkingWarning, conv, plan_tiles  # noqa: E402


def footprint_reference(x: np.ndarray, kernel: np.ndarray | None, spec: ConvSpec,
                        bias: np.ndarray | None = None) -> np.ndarray:
    """Slow, obviously-correct: loop over output cells using the resolved footprint.

    For a transposed spec each tap names the input cell and the kernel tap it
    meets (the scatter seen from the output).

    ``x`` is ``(N, *spatial, C)`` channels-last, float64 accumulation.
    """
    resolved = spec.resolve(x.shape)
    channels = x.shape[-1]
    groups = resolved.groups or 1
    padded_size = resolved.padded_size
    if spec.pool is None:
        assert kernel is not None
        filters = kernel.shape[-2] * groups if spec.transposed else kernel.shape[-1]
        per_group_in, per_group_out = channels // groups, filters // groups
    else:
        filters = channels
    out = np.zeros((x.shape[0], *resolved.output_size, filters))
    for n in range(x.shape[0]):
        for index in resolved.positions():
            taps = resolved.footprint(index)
            if spec.pool is None:
                value = np.zeros(filters)
                for tap in taps:
                    if tap.source is None:
                        continue
                    cell = x[(n, *tap.source)].astype(np.float64)
                    for g in range(groups):
                        ins = slice(g * per_group_in, (g + 1) * per_group_in)
                        outs = slice(g * per_group_out, (g + 1) * per_group_out)
                        if spec.transposed:  # kernel (*K, F/groups, C)
                            value[outs] += kernel[(*tap.kernel, slice(None), ins)] @ cell[ins]
                        else:  # kernel (*K, C/groups, F)
                            value[outs] += cell[ins] @ kernel[(*tap.kernel, slice(None), outs)]
                if bias is not None:
                    value += bias
            else:
                cells = [x[(n, *t.source)].astype(np.float64) for t in taps if t.source is not None]
                if spec.pool == "max":
                    value = np.max(cells, axis=0)
                else:
                    if spec.count_include_pad:
                        count = sum(all(p < s for p, s in zip(t.position, padded_size)) for t in taps)
                    else:
                        count = len(cells)
                    value = np.sum(cells, axis=0) / count
            out[(n, *index)] = value
    return out


# --------------------------------------------------------------------------- fixed cases

FIXED = [
    ("same stride 2 dilation 2", ConvSpec(3, strides=2, dilation=2, padding="same")),
    ("asymmetric explicit, reflect", ConvSpec((3, 2), padding=((2, 0), (1, 2)), padding_mode="reflect", strides=(1, 3))),
    ("circular wraps the true border", ConvSpec(3, padding=2, padding_mode="circular")),
    ("replicate, same_lower, stride 3", ConvSpec(4, padding="same_lower", padding_mode="replicate", strides=3)),
    ("groups 2", ConvSpec(3, padding="same", groups=2)),
    ("dropped rows", ConvSpec(3, strides=4)),
    ("max pool ceil", ConvSpec(3, strides=2, padding=1, pool="max", ceil_mode=True)),
    ("transposed, stride 2, same, groups 2", ConvSpec(3, strides=2, padding="same", transposed=True, groups=2)),
    ("transposed, crops and output padding", ConvSpec((3, 2), strides=(3, 2), padding=((1, 2), (0, 1)), transposed=True, output_padding=(1, 1))),
    ("avg pool, pad not counted", ConvSpec(3, strides=2, padding=1, pool="avg", ceil_mode=True)),
    ("avg pool, pad counted", ConvSpec(3, strides=2, padding=1, pool="avg", ceil_mode=True, count_include_pad=True)),
]


@pytest.mark.parametrize("name, spec", FIXED, ids=[name for name, _ in FIXED])
def test_fixed_specs_match_the_footprint_reference(name: str, spec: ConvSpec) -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 11, 13, 4)).astype(np.float32)
    resolved = spec.resolve(x.shape)
    kernel = bias = None
    if spec.pool is None:
        shape = (6 // resolved.groups, 4) if spec.transposed else (4 // resolved.groups, 6)
        kernel = rng.standard_normal((*spec.kernel_size, *shape)).astype(np.float32)
        bias = rng.standard_normal(6).astype(np.float32)
    dask_x = da.from_array(x, chunks=(1, (4, 3, 4), (6, 2, 5), 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ChunkingWarning)
        result = conv(dask_x, kernel, spec, bias).compute()
    expected = footprint_reference(x, kernel, spec, bias)
    assert result.shape == expected.shape
    assert result.dtype == np.float32
    assert relative_error(result, expected) <= 1e-5


def test_reflect_and_circular_read_the_image_border_not_the_chunk_border() -> None:
    # a ramp: a chunk-border reflection would read different values
    x = np.arange(12, dtype=np.float32).reshape(12, 1)
    picks = np.zeros((3, 1, 1), np.float32)
    picks[0] = 1.0  # output o reads input o - 1 (padding 1): the left neighbour
    for mode, first in (("reflect", 1.0), ("circular", 11.0), ("replicate", 0.0), ("zeros", 0.0)):
        spec = ConvSpec(3, padding=1, padding_mode=mode, rank=1)
        result = conv(da.from_array(x, chunks=(4, 1)), picks, spec).compute()[:, 0]
        assert result[0] == first, mode
        assert result[4] == 3.0  # inside: the left neighbour across a chunk border
        np.testing.assert_array_equal(result[1:], x[:-1, 0])


def test_plan_starts_every_block_on_a_stride_phase() -> None:
    spec = ConvSpec(5, strides=3, dilation=2, padding="same", rank=1)
    resolved = spec.resolve((100,))
    (plan,) = plan_tiles(resolved, [(17, 40, 43)])
    assert sum(plan.output_chunks) == resolved.output_size[0]
    assert sum(plan.input_chunks) == plan.padded_length == (resolved.output_size[0] - 1) * 3 + 9
    assert all(c % 3 == 0 for c in plan.input_chunks[:-1])
    assert plan.halo == 9 - 3
    assert all(c >= plan.halo for c in plan.input_chunks)


def test_blocks_follow_the_input_chunks_or_a_requested_regular_size() -> None:
    x = np.random.default_rng(4).standard_normal((50, 41, 1)).astype(np.float32)
    kernel = np.random.default_rng(5).standard_normal((3, 3, 1, 2)).astype(np.float32)
    spec = ConvSpec(3, padding="same")  # stride 1, lo = 1: a block ends one cell after a chunk
    dask_x = da.from_array(x, chunks=((20, 10, 20), (16, 25), 1))
    follows = conv(dask_x, kernel, spec)
    assert follows.chunks[:2] == ((21, 10, 19), (17, 24))
    regular = conv(dask_x, kernel, spec, output_block=(16, 8))
    assert regular.chunks[:2] == ((16, 16, 16, 2), (8, 8, 8, 8, 8, 1))
    expected = engine_conv(x, kernel, spec)
    np.testing.assert_allclose(follows.compute(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(regular.compute(), expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- randomized


@st.composite
def problems(draw: st.DrawFn) -> tuple:
    rank = draw(st.sampled_from([1, 2, 2, 3]))
    size = tuple(draw(st.integers(3, 14 if rank < 3 else 7)) for _ in range(rank))
    kernel_size = tuple(draw(st.integers(1, 4)) for _ in range(rank))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    dilation = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    padding = draw(st.one_of(
        st.sampled_from(["valid", "same", "same_lower", "full"]),
        st.tuples(*[st.tuples(st.integers(0, 3), st.integers(0, 3)) for _ in range(rank)]),
    ))
    pool = draw(st.sampled_from([None, None, None, "max", "avg"]))
    fields: dict = dict(kernel_size=kernel_size, strides=strides, dilation=dilation,
                        padding=padding, rank=rank, pool=pool)
    channels = draw(st.sampled_from([1, 2, 3, 4]))
    transposed = pool is None and draw(st.integers(0, 4)) == 0
    if transposed:
        fields["transposed"] = True
        if isinstance(padding, str):
            fields["padding"] = draw(st.sampled_from(["valid", "same"]))
        if draw(st.booleans()):
            fields["output_padding"] = tuple(
                draw(st.integers(0, max(s, d) - 1)) for s, d in zip(strides, dilation))
        fields["groups"] = draw(st.sampled_from([g for g in (1, 2, 3, 4) if channels % g == 0]))
    elif pool is None:
        fields["padding_mode"] = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
        fields["groups"] = draw(st.sampled_from([g for g in (1, 2, 3, 4) if channels % g == 0]))
    else:
        fields["ceil_mode"] = draw(st.booleans())
        fields["count_include_pad"] = draw(st.booleans())
        fields["dilation"] = dilation if pool == "max" else 1
    fields["data_format"] = draw(st.sampled_from(["channels_last", "channels_last", "channels_first"]))
    batch = draw(st.sampled_from([None, 1, 2]))
    chunks = []
    for n in size:
        cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=3))) if n > 1 else []
        edges = [0, *cuts, n]
        chunks.append(tuple(b - a for a, b in zip(edges, edges[1:])))
    seed = draw(st.integers(0, 2**32 - 1))
    return fields, size, channels, batch, tuple(chunks), seed


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_dask_equals_the_in_memory_engine(problem: tuple) -> None:
    fields, size, channels, batch, chunks, seed = problem
    try:
        spec = ConvSpec(**fields)
        shape = (*size, channels) if fields["data_format"] == "channels_last" else (channels, *size)
        resolved = spec.resolve(shape)
    except ValueError:
        hypothesis.assume(False)
        return
    rng = np.random.default_rng(seed)
    full_shape = shape if batch is None else (batch, *shape)
    x = rng.standard_normal(full_shape).astype(np.float32)
    kernel = bias = None
    if spec.pool is None:
        groups = resolved.groups
        filters = groups * int(rng.integers(1, 3))
        kernel_shape = ((*spec.kernel_size, filters // groups, channels) if spec.transposed
                        else (*spec.kernel_size, channels // groups, filters))
        kernel = rng.standard_normal(kernel_shape).astype(np.float32)
        bias = rng.standard_normal(filters).astype(np.float32) if rng.random() < 0.5 else None
    spatial_first = 1 if batch is not None else 0
    if fields["data_format"] == "channels_first":
        spatial_first += 1
    dask_chunks = [1] * x.ndim
    for axis, c in enumerate(chunks):
        dask_chunks[spatial_first + axis] = c
    dask_x = da.from_array(x, chunks=tuple(dask_chunks))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ChunkingWarning)
        lazy = conv(dask_x, kernel, spec, bias)
    expected = engine_conv(x, kernel, spec, bias=bias)
    result = lazy.compute()
    assert lazy.shape == expected.shape, f"seed {seed}"
    assert result.dtype == expected.dtype
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5, err_msg=f"seed {seed}")


# --------------------------------------------------------------------------- distributed


def test_two_workers_on_a_local_cluster() -> None:
    distributed = pytest.importorskip("distributed")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 36, 2)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 2, 3)).astype(np.float32)
    spec = ConvSpec(3, dilation=2, strides=2, padding="same", padding_mode="reflect")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster) as client:
        lazy = conv(da.from_array(x, chunks=(10, 12, 1)), kernel, spec)
        result = client.compute(lazy).result()
        assert len(client.scheduler_info()["workers"]) == 2
    expected = engine_conv(x[None], kernel, spec)[0]
    assert relative_error(result, expected) <= 1e-5


# --------------------------------------------------------------------------- bad input


def test_chunks_smaller_than_the_halo_are_enlarged_with_a_warning() -> None:
    x = np.random.default_rng(1).standard_normal((30, 30, 1)).astype(np.float32)
    kernel = np.ones((7, 7, 1, 1), np.float32)
    spec = ConvSpec(7, dilation=2, padding="same")  # effective kernel 13: halo 12
    with pytest.warns(ChunkingWarning, match=r"smaller than the convolution's halo \(12 cells"):
        lazy = conv(da.from_array(x, chunks=(5, 5, 1)), kernel, spec)
    assert min(lazy.chunks[0][:-1]) >= 12
    np.testing.assert_allclose(lazy.compute(), engine_conv(x, kernel, spec), rtol=1e-5, atol=1e-5)


def test_mismatched_kernel_channels_fail_at_graph_building() -> None:
    x = da.zeros((16, 16, 3), chunks=8)
    with pytest.raises(ValueError, match=r"kernel has shape \(3, 3, 2, 4\).*3 input channels"):
        conv(x, np.zeros((3, 3, 2, 4)), ConvSpec(3))
    with pytest.raises(ValueError, match="divisible by groups=3"):
        conv(x, np.zeros((3, 3, 1, 4)), ConvSpec(3, groups=3))
    with pytest.raises(ValueError, match=r"bias has shape \(3,\), expected \(4,\)"):
        conv(x, np.zeros((3, 3, 3, 4)), ConvSpec(3), bias=np.zeros(3))


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((np.zeros((8, 8, 1)), np.zeros((3, 3, 1, 1)), ConvSpec(3)), TypeError, "dask.array.from_array"),
        ((da.zeros((8, 8, 2)), np.zeros((3, 3, 2, 1)), ConvSpec(3, transposed=True)), ValueError,
         r"a transposed spec needs \(3, 3, 'filters // groups', 2\)"),
        ((da.zeros((8, 8)), np.zeros((3, 3, 1, 1)), ConvSpec(3)), ValueError, "needs 3 axes"),
        ((da.zeros((8, 8, 1)), None, ConvSpec(3)), ValueError, "kernel is required"),
        ((da.zeros((8, 8, 1)), np.zeros((3, 3, 1, 1)), ConvSpec(3, pool="max")), ValueError, "takes no kernel"),
        ((da.zeros((8, 8, 1)), np.zeros((3, 3, 1, 1)), {"kernel_size": 3}), TypeError, "ConvSpec"),
        ((da.zeros((2, 2, 1)), np.zeros((3, 3, 1, 1)), ConvSpec(3)), ValueError, "kernel spans 3"),
    ],
)
def test_bad_input_is_named(args: tuple, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        conv(*args)


@pytest.mark.parametrize("kind", ["zeros", "reflect", "replicate", "circular", "max", "avg"])
def test_negative_padding_crops_like_the_engine(kind: str) -> None:
    """Negative explicit padding (a crop, before any copies) across chunk borders."""
    rng = np.random.default_rng(17)
    x = rng.standard_normal((1, 30, 31, 2))
    padding = ((-1, -2), (1, 1))
    if kind in ("max", "avg"):
        spec, kernel = ConvSpec(3, padding=padding, pool=kind, count_include_pad=False), None
    else:
        spec, kernel = ConvSpec(3, padding=padding, padding_mode=kind), rng.standard_normal((3, 3, 2, 3))
    expected = engine_conv(x, kernel, spec)
    result = conv(da.from_array(x, chunks=(1, 10, 10, 2)), kernel, spec).compute()
    assert result.shape == expected.shape
    np.testing.assert_allclose(result, expected, rtol=1e-12, atol=1e-12)


def test_blocks_run_the_engine_on_one_thread(monkeypatch):
    """Dask runs blocks side by side, so each block's engine call is limited to one
    thread (no thread per core per block); the result is unchanged."""
    from convarith.engine.algorithms._threads import worker_count
    from convarith.scale import tiling

    seen = []

    def recording(block, *args, **kwargs):
        if block.shape[1:3] != (3, 3):  # not the one-window probe made with the graph
            seen.append(worker_count())
        return engine_conv(block, *args, **kwargs)

    monkeypatch.setattr(tiling, "_engine_conv", lambda: recording)
    rng = np.random.default_rng(12)
    x = rng.standard_normal((1, 40, 36, 2)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 2, 4)).astype(np.float32)
    spec = ConvSpec(3, padding="same")
    y = conv(da.from_array(x, chunks=(1, 16, 16, 2)), kernel, spec).compute(scheduler="threads")
    assert seen and set(seen) == {1}
    np.testing.assert_allclose(y, engine_conv(x, kernel, spec), rtol=1e-5, atol=1e-6)
