"""The PyTorch and JAX backends on a GPU: the same results as the NumPy engine.

These run only where the framework sees a CUDA device (each test says so
when it skips); nothing else in convarith needs one. The cases are the
random ones of ``test_backends`` (``_helpers.random_backend_calls``), run with the data on the device, and the
torch test checks that the device was actually used.
"""

from __future__ import annotations

import pytest

import convarith
from _helpers import random_backend_calls, relative_error

pytestmark = pytest.mark.oracle

COUNT = 40


def _cuda_torch():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: torch.cuda.is_available() is False, so backend='torch' runs on the CPU "
                    "(covered by test_backends)")
    return torch


def _gpu_jax():
    jax = pytest.importorskip("jax")
    if jax.default_backend() != "gpu":
        pytest.skip(f"no GPU for JAX: jax.default_backend() is {jax.default_backend()!r}, so backend='jax' "
                    "runs on the CPU (covered by test_backends)")
    return jax


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_gpu_backend_matches_engine(backend: str) -> None:
    if backend == "torch":
        torch = _cuda_torch()
        torch.cuda.reset_peak_memory_stats()
    else:
        _gpu_jax()
    for spec, x, kernel, bias, seed in random_backend_calls(COUNT):
        expected = convarith.conv(x, kernel, spec, bias)
        got = convarith.conv(x, kernel, spec, bias, backend=backend)
        error = relative_error(got, expected)
        # GPUs may use TF32 or reassociate sums: a looser bound than the CPU's 1e-5.
        assert error <= 1e-3, f"seed {seed}: {spec} on {x.shape}: relative error {error:.2e} on the GPU"
    if backend == "torch":
        assert torch.cuda.max_memory_allocated() > 0, "backend='torch' never allocated on the CUDA device"
