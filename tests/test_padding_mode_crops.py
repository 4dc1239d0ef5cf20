"""Negative padding with PyTorch's copying padding modes: the crop comes first.

PyTorch's ``Conv*d(padding=-p, padding_mode="reflect"|"replicate"|"circular")``
crops ``p`` cells from both sides (its ``F.pad`` crops negative sides, then
copies into the positive ones). Found by the live conformance test (seed
308233915: ``Conv1d(2, 1, 2, padding=-1, padding_mode="circular")`` on 12
cells gives 9).
"""

from __future__ import annotations

import numpy as np
import pytest

import convarith
from convarith.engine import kernel_from_torch
from convarith.engine.padding import pad, pad_adjoint
from convarith.frontdoors import from_torch

MODES = ("reflect", "replicate", "circular")


def test_pad_crops_then_copies_by_hand() -> None:
    row = np.arange(5.0).reshape(1, 5, 1)
    # crop one cell on the left, then copy two on the right from [1, 2, 3, 4]
    assert pad(row, ((-1, 2),), "circular")[0, :, 0].tolist() == [1, 2, 3, 4, 1, 2]
    assert pad(row, ((-1, 2),), "reflect")[0, :, 0].tolist() == [1, 2, 3, 4, 3, 2]
    assert pad(row, ((2, -1),), "replicate")[0, :, 0].tolist() == [0, 0, 0, 1, 2, 3]
    assert pad(row, ((-1, -1),), "reflect")[0, :, 0].tolist() == [1, 2, 3]


@pytest.mark.parametrize("mode", MODES)
def test_pad_adjoint_is_the_transpose(mode: str) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 6, 7, 3))
    pads = ((-1, 2), (2, -2))
    g = rng.standard_normal(pad(x, pads, mode).shape)
    # <pad(x), g> == <x, pad_adjoint(g)> for every x, g (the definition of the adjoint)
    assert np.isclose(np.sum(pad(x, pads, mode) * g), np.sum(x * pad_adjoint(g, pads, mode)))


def test_mixed_signs_on_one_axis_are_refused_with_copying_modes() -> None:
    with pytest.raises(ValueError, match=r"padding\[0\]=\(-1, 1\) crops one side and pads the other"):
        convarith.ConvSpec(3, padding=((-1, 1), (0, 0)), padding_mode="reflect")
    convarith.ConvSpec(3, padding=((-1, 1), (0, 0)))  # zeros: crop and pad are both well defined


def test_torch_front_door_keeps_refusing_negative_zero_padding() -> None:
    with pytest.raises(ValueError, match="padding"):
        from_torch("Conv1d", in_channels=2, out_channels=1, kernel_size=2, padding=-1)


@pytest.mark.oracle
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding", [-1, -2, (-1, 1), (0, -1)])
def test_matches_torch_forward_and_gradients(mode: str, padding: int | tuple[int, int]) -> None:
    torch = pytest.importorskip("torch")
    seed = 11 + MODES.index(mode)
    rng = np.random.default_rng(seed)
    for rank in (1, 2):
        if isinstance(padding, tuple) and rank == 1:
            continue
        layer = (torch.nn.Conv1d if rank == 1 else torch.nn.Conv2d)(
            3, 4, 3, padding=padding, padding_mode=mode).double()
        size = (11,) if rank == 1 else (9, 10)
        x = torch.tensor(rng.standard_normal((2, 3, *size)), requires_grad=True)
        y = layer(x)
        g = torch.tensor(rng.standard_normal(tuple(y.shape)))
        y.backward(g)
        spec = from_torch(f"Conv{rank}d", in_channels=3, out_channels=4, kernel_size=3,
                          padding=padding, padding_mode=mode)
        kernel = kernel_from_torch(layer.weight.detach().numpy())
        bias = layer.bias.detach().numpy()
        ours = convarith.conv(x.detach().numpy(), kernel, spec, bias=bias)
        d_x, d_k, _ = convarith.conv_vjp(x.detach().numpy(), kernel, spec, g.numpy(), bias=bias)
        what = f"seed {seed}, Conv{rank}d padding={padding} padding_mode={mode}"
        assert ours.shape == tuple(y.shape), what
        np.testing.assert_allclose(ours, y.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=what)
        np.testing.assert_allclose(d_x, x.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=what)
        np.testing.assert_allclose(d_k, kernel_from_torch(layer.weight.grad.numpy()), rtol=1e-10,
                                   atol=1e-12, err_msg=what)
