"""The benchmark script runs, with and without the oracle frameworks.

Timings are never asserted (speed is read from the table, not tested); what
is checked is that every column is filled from a real run, that the errors
against float64 are small, and that missing PyTorch or JAX leaves their
columns empty instead of failing.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

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
                                repeat=1, only_first=True)
    results += nets.run_networks(["wavenet"], (2,), image=32, backward=True, repeat=1,
                                 only_first=True)
    assert [n.direction for n in results] == ["forward"] * (len(nets.NETWORKS) + 1) + [
        "backward"]
    for network in results:
        assert len(network.layers) == 1
        layer = network.layers[0]
        assert layer.convarith_s > 0 and layer.rel_error <= 1e-5, layer
        if layer.torch_s is not None:
            assert network.ratio == pytest.approx(layer.torch_s / layer.convarith_s)
    table = nets.render_networks(results)
    assert "resnet50" in table and "wavenet" in table
    assert "| resnet50 | 1 | for | 7x7 s2, 3->64, 32x32 |" in nets.markdown_layers(results)


@pytest.mark.parametrize(("argv", "message"), [
    (["--networks", "resnet51"], "--networks: unknown network(s) ['resnet51']; choose from"),
    (["--batches", "1,x"], "--batches must be comma-separated whole numbers, got '1,x'"),
    (["--batches", "0"], "--batches must be at least 1, got '0'"),
    (["--image", "16"], "--image must be at least 32 (five halvings), got 16"),
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
