"""The benchmark script runs, with and without the oracle frameworks.

Timings are never asserted (speed is read from the table, not tested); what
is checked is that every column is filled from a real run, that the errors
against float64 are small, and that missing PyTorch or JAX leaves their
columns empty instead of failing.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from convarith import ConvSpec, bench

TINY = (
    bench.BenchCase("T1", "3x3 same, 4->8", (2, 9, 9, 4), (3, 3, 4, 8),
                    ConvSpec(3, padding="same"), backward=True),
    bench.BenchCase("T2", "transposed 3x3 s2", (2, 5, 5, 4), (3, 3, 6, 4),
                    ConvSpec(3, strides=2, padding="same", transposed=True)),
)


def test_flop_count_is_the_direct_definition() -> None:
    # 2 · N · output cells · taps · C · F, derived by hand for T1
    assert TINY[0].flops == 2 * 2 * 9 * 9 * 9 * 4 * 8
    # transposed: every input cell meets every tap once: 2 · N · 25 · 9 · F · C
    assert TINY[1].flops == 2 * 2 * 5 * 5 * 9 * 6 * 4
    assert TINY[1].output_shape == (2, 10, 10, 6)


def test_run_fills_every_column_and_measures_error() -> None:
    results = bench.run(TINY, repeat=2, block=1)
    assert [(r.case, r.direction) for r in results] == [
        ("T1", "forward"), ("T1", "backward"), ("T2", "forward")]
    for result in results:
        assert result.convarith_s > 0 and result.matmul_gflops > 0
        assert result.rel_error < 1e-5, result
        assert all(len(times) == 2 for times in result.samples.values())
        if result.torch_s is not None:
            assert result.ratio == pytest.approx(result.torch_s / result.convarith_s)
    table = bench.render(results, plain=True)
    assert "T1" in table and "T2" in table


def test_bad_block_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        bench.main(["--cases", "L6", "--block", "0"])
    assert stop.value.code == 2
    assert "--block must be at least 1, got 0" in capsys.readouterr().err


def test_runs_without_torch_and_jax(tmp_path) -> None:
    out = tmp_path / "bench.json"
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None
        sys.modules["jax"] = None
        from convarith import bench
        sys.exit(bench.main(["--cases", "L6", "--repeat", "1", "--block", "1", "--quick",
                             "--plain", "--json", {str(out)!r}]))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "L6" in done.stdout
    figures = json.loads(out.read_text())["results"]
    assert len(figures) == 1
    assert figures[0]["torch_s"] is None and figures[0]["jax_s"] is None
    assert figures[0]["convarith_s"] > 0 and figures[0]["rel_error"] < 1e-5


def test_script_quiets_openblas_idle_threads(tmp_path) -> None:
    """``python -m convarith.bench`` re-runs itself with OpenBLAS's spin time cut."""
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    done = subprocess.run(
        [sys.executable, "-m", "convarith.bench", "--cases", "L6", "--repeat", "1", "--block",
         "1", "--quick", "--plain", "--json", str(out)],
        capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "OPENBLAS_THREAD_TIMEOUT=22" in done.stdout


# --------------------------------------------------------------------------- networks suite

#: Multiply-adds per 224² image as torchvision's model documentation gives them
#: ("GFLOPS", counting multiply-adds, fully connected layers included), and the
#: multiply-adds of those fully connected layers (inputs × outputs, by hand).
PUBLISHED_GMACS = {"resnet50": (4.09, 2048 * 1000), "resnext50": (4.23, 2048 * 1000),
                   "mobilenet_v2": (0.30, 1280 * 1000), "efficientnet_b0": (0.39, 1280 * 1000),
                   "vgg16": (15.47, 25088 * 4096 + 4096 * 4096 + 4096 * 1000)}


def test_networks_match_their_published_sizes() -> None:
    from convarith import bench_networks as nets

    for name, (gmacs, classifier) in PUBLISHED_GMACS.items():
        layers = nets.NETWORKS[name](224)
        total = (nets.multiply_adds(layers) + classifier) / 1e9
        assert abs(total - gmacs) <= 0.01 * gmacs + 0.005, (name, total)
    # conv weights: VGG-16's feature extractor 14,714,688 parameters less 4,224 biases;
    # ResNet-50's 25,557,032 less the classifier (2,049,000) and 53,120 batch-norm values
    conv_weights = {name: sum(math.prod(layer.kernel_shape()) for layer in nets.NETWORKS[name](224)
                              if layer.kernel_shape() is not None)
                    for name in ("vgg16", "resnet50")}
    assert conv_weights == {"vgg16": 14_714_688 - 4_224,
                            "resnet50": 25_557_032 - 2_049_000 - 53_120}
    counts = {name: sum(layer.kind == "conv" for layer in nets.NETWORKS[name](224))
              for name in ("resnet50", "mobilenet_v2", "vgg16")}
    assert counts == {"resnet50": 53, "mobilenet_v2": 52, "vgg16": 13}
    resnext = nets.NETWORKS["resnext50"](224)
    assert {layer.groups for layer in resnext if layer.kind == "conv" and layer.kernel == 3} == {32}
    unet = nets.NETWORKS["unet"](224)
    ups = [layer for layer in unet if layer.kind == "transposed"]
    assert [(u.kernel, u.stride) for u in ups] == [(2, 2)] * 4
    assert unet[-1].output_size() == (224, 224)
    wavenet = nets.wavenet(4096)
    dilated = [layer.dilation for layer in wavenet if layer.kernel == 2]
    assert dilated == [1, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    assert all(layer.padding == "causal" and layer.output_size() == (4096,)
               for layer in wavenet if layer.kernel == 2)


def test_networks_suite_runs_one_small_layer_per_network(tmp_path) -> None:
    from convarith import bench_networks as nets

    results = nets.run_networks(list(nets.NETWORKS), (1,), image=32, backward=False,
                                repeat=1, only_first=True, one_process=True)
    results += nets.run_networks(["wavenet"], (2,), image=32, forward=False, repeat=1,
                                 only_first=True, one_process=True)
    assert [n.direction for n in results] == ["forward"] * len(nets.NETWORKS) + ["backward"]
    for network in results:
        assert len(network.layers) == 1
        layer = network.layers[0]
        assert layer.convarith_s > 0 and layer.rel_error <= 1e-5, layer
        if layer.torch_s is not None:
            assert network.ratio == pytest.approx(layer.torch_s / layer.convarith_s)
    table = nets.render_networks(results)
    assert "resnet50" in table and "wavenet" in table
    assert "| resnet50 | 1 | for | 7x7 s2, 3->64, 32x32 |" in nets.markdown_layers(results)


def test_networks_suite_times_at_least_one_direction() -> None:
    from convarith import bench_networks as nets

    with pytest.raises(ValueError, match="forward=False and backward=False time nothing"):
        nets.run_networks(["wavenet"], (1,), forward=False, backward=False)
    with pytest.raises(SystemExit) as stop:
        bench.main(["--directions", "backward"])
    assert stop.value.code == 2


@pytest.mark.parametrize("gradients", ["both", "input", "kernel"])
def test_torch_backward_runner_returns_the_asked_gradients(gradients: str) -> None:
    """The PyTorch side of a backward race: the gradients asked for, in their shapes,
    the same on every call (the forward's graph is kept, not rebuilt per call)."""
    torch = pytest.importorskip("torch")

    case = bench.BenchCase("g", "g", (2, 9, 9, 4), (3, 3, 4, 6),
                           ConvSpec(3, strides=2, padding="same"), backward=True)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(case.input_shape).astype(np.float32)
    kernel = rng.standard_normal(case.kernel_shape).astype(np.float32)
    picked = bench.torch_runner(case, x, kernel, True, gradients)
    assert picked is not None
    fn, _ = picked
    first, again = fn(), fn()
    shapes = {"input": (2, 4, 9, 9), "kernel": (6, 4, 3, 3)}
    expected = [shapes["input"], shapes["kernel"]] if gradients == "both" else [
        shapes[gradients]]
    assert [tuple(g.shape) for g in first] == expected
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    with pytest.raises(ValueError, match="gradients must be 'both', 'input' or 'kernel'"):
        bench.torch_runner(case, x, kernel, True, "weights")


@pytest.mark.parametrize(("argv", "message"), [
    (["--networks", "resnet51"], "--networks: unknown network(s) ['resnet51']; choose from"),
    (["--batches", "1,x"], "--batches must be comma-separated whole numbers, got '1,x'"),
    (["--batches", "0"], "--batches must be at least 1, got '0'"),
    (["--image", "16"], "--image must be at least 32 (five halvings), got 16"),
    (["--threads", "0"], "--threads must be at least 1 and needs a process per runtime"),
    (["--threads", "1", "--one-process"], "--threads must be at least 1 and needs a process"),
])
def test_networks_suite_refuses_bad_arguments(argv, message,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        bench.main(["--suite", "networks", *argv])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_the_documented_layer_inventory_is_the_generated_one() -> None:
    from pathlib import Path

    from convarith import bench_networks as nets

    page = Path(__file__).resolve().parents[1] / "docs" / "benchmarks-networks.md"
    assert nets.inventory_markdown() in page.read_text(encoding="utf-8")


def test_each_runtime_times_in_a_process_of_its_own_on_the_same_inputs() -> None:
    """The default race: one child process per runtime, identical inputs, the
    checks (error against PyTorch, peak memory, paths) filled from the convarith one."""
    from convarith import bench_networks as nets

    results = nets.run_networks(["resnet50"], (1,), image=32, backward=False, repeat=1,
                                only_first=True)
    assert [n.direction for n in results] == ["forward"]
    for network in results:
        pids = network.processes
        assert set(pids) == set(nets.RUNTIMES)
        assert len(set(pids.values())) == 3 and os.getpid() not in pids.values(), pids
        assert len(set(network.input_checksums.values())) == 1, network.input_checksums
        (layer,) = network.layers
        assert layer.layer == "7x7 s2, 3->64, 32x32" and layer.convarith_s > 0
        assert layer.paths and layer.memory_ratio == layer.peak_bytes / layer.io_bytes
        if layer.torch_s is not None:
            assert layer.error_against == "torch float64"
        assert 0 < layer.rel_error <= 1e-5, layer
    assert results[0].layers[0].onnxruntime_s is not None or \
        importlib.util.find_spec("onnxruntime") is None


def test_rounds_take_turns_in_fresh_processes_and_keep_each_layers_best(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``rounds=3``: every runtime times the network three times, each in a fresh
    process, a different runtime first each round, the convarith checks made once;
    each layer's time is the least of its rounds' medians."""
    from convarith import bench_networks as nets

    calls: list[tuple[str, bool]] = []
    fake = {"convarith": [0.3, 0.1, 0.2], "torch": [0.5, 0.6, 0.4],
            "onnxruntime": [0.7, 0.9, 0.8]}

    def child(folder: str, fn: object, runtime: str, *args: object,
              threads: int | None = None) -> dict[str, object]:
        check = args[-1]
        assert isinstance(check, bool)
        calls.append((runtime, check))
        time = fake[runtime][sum(r == runtime for r, _ in calls) - 1]
        return {"times": [time], "checks": [([1e-7], "torch float64", 10, 20)] if check
                else [], "paths": [["direct"]], "pid": len(calls), "checksum": 7}

    monkeypatch.setattr(nets, "_in_child", child)
    (network,) = nets.run_networks(["resnet50"], (1,), image=32, backward=False,
                                   only_first=True, rounds=3)
    assert [r for r, _ in calls] == ["convarith", "torch", "onnxruntime",
                                     "torch", "onnxruntime", "convarith",
                                     "onnxruntime", "convarith", "torch"]
    assert [c for _, c in calls] == [True] * 3 + [False] * 6
    (layer,) = network.layers
    assert (layer.convarith_s, layer.torch_s, layer.onnxruntime_s) == (0.1, 0.4, 0.7)
    assert layer.rel_error == 1e-7 and layer.memory_ratio == 0.5
    with pytest.raises(ValueError, match="rounds=2 needs"):
        nets.run_networks(["wavenet"], (1,), rounds=2, one_process=True)
    for bad in (["--rounds", "0"], ["--rounds", "2", "--one-process"]):
        with pytest.raises(SystemExit) as stop:
            bench.main(["--suite", "networks", *bad])
        assert stop.value.code == 2


def test_peak_memory_counts_the_result_and_the_call_arrays() -> None:
    from convarith import bench_networks as nets

    layer = nets.NetLayer("conv", (12, 12), 4, 8, 3, padding=1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(layer.input_shape(2), np.float32)
    kernel = rng.standard_normal(layer.kernel_shape(), np.float32)
    out_bytes = 4 * 2 * 12 * 12 * 8
    _, _, peak, io = nets._check_layer(layer, 2, x, kernel, None)
    assert io == x.nbytes + kernel.nbytes + out_bytes == 4 * (2 * 144 * 4 + 9 * 32) + out_bytes
    assert peak >= out_bytes  # the result is allocated during the call (NumPy is traced)
    d_out = nets._output_gradient(layer, 2)
    errors, _, peak, io = nets._check_layer(layer, 2, x, kernel, d_out)
    assert len(errors) == 2 and max(errors) < 1e-5  # input and kernel gradients
    assert io == 2 * (x.nbytes + kernel.nbytes) + d_out.nbytes
    assert peak >= x.nbytes + kernel.nbytes  # both gradients


def test_errors_are_measured_against_an_independent_result(monkeypatch) -> None:
    pytest.importorskip("torch")
    import convarith.engine
    from convarith import bench_networks as nets

    layer = nets.NetLayer("conv", (9, 9), 3, 5, 3, stride=2, padding=1)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(layer.input_shape(1), np.float32)
    kernel = rng.standard_normal(layer.kernel_shape(), np.float32)
    errors, against, _, _ = nets._check_layer(layer, 1, x, kernel, None)
    assert against == "torch float64" and errors[0] < 1e-6
    real = convarith.engine.conv
    monkeypatch.setattr(convarith.engine, "conv",
                        lambda *args, **kwargs: real(*args, **kwargs) * np.float32(1.001))
    errors, _, _, _ = nets._check_layer(layer, 1, x, kernel, None)
    assert errors[0] == pytest.approx(1e-3, rel=1e-2)


def _result(direction: str, paths: list[str], errors: list[float], memory: float,
            torch_s: float | None = 2e-3) -> object:
    from convarith import bench_networks as nets

    return nets.LayerResult("net", "3x3, 8->8, 8x8", "conv", 1, direction, 1, 1, paths, 1e-3,
                            torch_s, None, max(errors), errors, "torch float64",
                            int(memory * 1000), 1000, memory)


def test_summary_lists_memory_over_the_limit_and_errors_per_path() -> None:
    from convarith import bench_networks as nets

    forward = nets.NetworkResult("net", 1, "forward", [
        _result("forward", ["gemm"], [3e-7], 0.9), _result("forward", ["depthwise"], [1e-6], 2.5)])
    text = nets.render_networks([forward])
    assert "backward" not in text and "(min )" not in text
    assert "per-layer geomean torch/convarith: forward 2.00 (min 2.00); worst" in text
    assert "peak extra memory over 1.5x (input + kernel + output bytes): 1 layers" in text
    assert "2.50x net batch 1 for: 3x3, 8->8, 8x8 (depthwise)" in text
    assert "against torch float64, forward: depthwise 1.0e-06, gemm 3.0e-07" in text
    backward = nets.NetworkResult("net", 1, "backward", [
        _result("backward", ["gemm", "col2im", "wgrad"], [4e-7, 2e-6], 1.2)])
    info = nets.summary_networks([forward, backward])
    assert info["backward_worst_error_per_path"] == {"col2im": 4e-7, "wgrad": 2e-6}
    assert info["worst_memory_ratio"] == {"net batch 1 forward": 2.5,
                                          "net batch 1 backward": 1.2}
    assert [o["memory_ratio"] for o in info["over_memory_limit"]] == [2.5]
    text = nets.render_networks([forward, backward])
    assert "backward: col2im 4.0e-07, wgrad 2.0e-06" in text
    assert "| net | 1 | for | 3x3, 8->8, 8x8 | 1 | depthwise |" in nets.markdown_layers([forward])
    assert nets.markdown_layers([forward]).splitlines()[3].endswith("| 2.50 |")


@pytest.mark.parametrize(("mode", "frozen"), [("prepacked", True), ("in-place", False)])
def test_networks_weights_mode_decides_whether_the_kernel_is_prepacked(
        mode: str, frozen: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--weights`` (through the variable the children inherit): a prepacked kernel is
    read-only and equal to the one given; an in-place one is the caller's own array."""
    from convarith import bench_networks as nets

    monkeypatch.setenv(nets.WEIGHTS_VARIABLE, mode)
    layer = nets.vgg16(32)[1]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(layer.input_shape(1), np.float32)
    kernel = rng.standard_normal(layer.kernel_shape(), np.float32)
    seen = []
    monkeypatch.setattr("convarith.engine.conv", lambda x, k, spec: seen.append(k) or k)
    nets._runner("convarith", layer, 1, x, kernel, None)()
    (given,) = seen
    assert (not given.flags.writeable) is frozen and (given is kernel) is not frozen
    np.testing.assert_array_equal(given, kernel)
    assert nets.weights_mode() == mode


def test_networks_weights_mode_refuses_an_unknown_value(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CONVARITH_BENCH_WEIGHTS", "frozen")
    with pytest.raises(SystemExit) as stop:
        bench.main(["--suite", "networks"])
    assert stop.value.code == 2
    assert "CONVARITH_BENCH_WEIGHTS='frozen' is not a weights mode" in capsys.readouterr().err
