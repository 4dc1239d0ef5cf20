"""Run a :class:`~convarith.ConvSpec` through PyTorch (GPU when available).

The padding is the resolved spec's, applied with ``F.pad`` before a
``padding=0`` call (a transposed convolution runs in full and is cropped),
exactly as :mod:`convarith.port` writes PyTorch code, so the result equals
the NumPy engine's to float tolerance.

Examples
--------
>>> import numpy as np
>>> from convarith import ConvSpec
>>> x = np.arange(16.0).reshape(1, 4, 4, 1)
>>> conv(x, np.ones((2, 2, 1, 1)), ConvSpec(2, strides=2))[0, :, :, 0]
array([[10., 18.],
       [42., 50.]])
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..engine.core import Prepared, finish, prepare
from ..spec import ConvSpec

__all__ = ["conv"]

_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise ImportError("backend='torch' needs PyTorch: pip install torch") from None
    return torch


def _pad_arg(pairs: Any) -> list[int]:
    flat: list[int] = []
    for lo, hi in reversed(list(pairs)):
        flat += [int(lo), int(hi)]
    return flat


def conv(x: Any, kernel: Any, spec: ConvSpec, bias: Any = None) -> np.ndarray:
    """``spec`` on ``x`` through PyTorch; same conventions and result as :func:`convarith.conv`."""
    torch = _torch()
    functional = torch.nn.functional
    call = prepare(x, kernel, spec, bias)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = call.resolved
    rank = resolved.rank
    pool_padding = list(resolved.window_padding)  # ceil-mode cells included
    t = torch.from_numpy(call.x).to(device).movedim(-1, 1)  # prepare gives (N, *spatial, C)
    strides = list(spec.strides)
    dilation = list(spec.dilation)
    groups = resolved.groups or 1
    if spec.pool == "max":
        padded = functional.pad(t, _pad_arg(pool_padding), value=float("-inf"))
        pool = getattr(functional, f"max_pool{rank}d")
        y = pool(padded, list(spec.kernel_size), strides, 0, dilation)
    elif spec.pool == "avg":
        channels = t.shape[1]
        window = torch.ones((channels, 1, *spec.kernel_size), dtype=t.dtype, device=device)
        windowed = getattr(functional, f"conv{rank}d")
        counted = torch.ones_like(t[:1, :1])
        if spec.count_include_pad:
            counted = functional.pad(counted, _pad_arg(resolved.padding), value=1.0)
            counted = functional.pad(counted, _pad_arg([(0, e) for e in _extra(call)]))
        else:
            counted = functional.pad(counted, _pad_arg(pool_padding))
        total = windowed(functional.pad(t, _pad_arg(pool_padding)), window, None, strides, 0, dilation, channels)
        count = windowed(counted, window[:1], None, strides, 0, dilation, 1)
        y = total / count
    elif spec.transposed:
        assert call.kernel is not None
        weight = torch.from_numpy(np.ascontiguousarray(np.moveaxis(call.kernel, (rank, rank + 1), (1, 0)))).to(device)
        transposed = getattr(functional, f"conv_transpose{rank}d")
        full = transposed(t, weight, None, strides, 0, 0, groups, dilation)
        y = functional.pad(full, _pad_arg([(-lo, -hi) for lo, hi in resolved.crop]))
    else:
        assert call.kernel is not None
        weight = torch.from_numpy(np.ascontiguousarray(np.moveaxis(call.kernel, (rank, rank + 1), (1, 0)))).to(device)
        mode = _MODES[spec.padding_mode]
        pads = _pad_arg(resolved.padding)
        padded = functional.pad(t, pads, mode=mode) if any(pads) else t
        y = getattr(functional, f"conv{rank}d")(padded, weight, None, strides, 0, dilation, groups)
    if call.bias is not None:
        y = y + torch.from_numpy(call.bias).to(device).reshape(1, -1, *([1] * rank))
    result = finish(y.movedim(1, -1).detach().cpu().numpy(), call)
    assert result is not None
    return result


def _extra(call: Prepared) -> list[int]:
    return [hi - h for (_, hi), (_, h) in zip(call.resolved.window_padding, call.resolved.padding)]
