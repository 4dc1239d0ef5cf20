"""Generate golden vectors for the engine with PyTorch (float64, forward and gradients).

Writes ``tests/golden/engine_<group>.npz``: for each case the ConvSpec fields
(JSON, under ``cases``), the input in the spec's layout, the kernel in the
engine's layout, bias, output gradient, and PyTorch's output and gradients.
The engine tests read them without needing PyTorch.

Usage::

    python scripts/gen_golden_engine.py            # rewrite tests/golden/engine_*.npz
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from convarith import kernel_from_torch

OUT = Path(__file__).resolve().parent.parent / "tests" / "golden"
TORCH_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate",
               "circular": "circular"}


def _conv(rank: int, x: Any, w: Any, b: Any, fields: dict[str, Any]) -> Any:
    pads = fields.get("padding", "valid")
    convolve = getattr(F, f"conv{rank}d")
    if pads == "same":
        return convolve(x, w, b, 1, "same", fields.get("dilation", 1), fields.get("groups", 1))
    flat = [p for lo, hi in reversed(pads) for p in (lo, hi)]
    mode = TORCH_MODES[fields.get("padding_mode", "zeros")]
    return convolve(F.pad(x, flat, mode=mode), w, b, fields.get("strides", 1), 0,
                    fields.get("dilation", 1), fields.get("groups", 1))


def _transpose(rank: int, x: Any, w: Any, b: Any, fields: dict[str, Any]) -> Any:
    return getattr(F, f"conv_transpose{rank}d")(
        x, w, b, fields.get("strides", 1), fields["padding"], fields.get("output_padding", 0),
        fields.get("groups", 1), fields.get("dilation", 1))


def _pool(rank: int, x: Any, w: Any, b: Any, fields: dict[str, Any]) -> Any:
    if fields["pool"] == "max":
        return getattr(F, f"max_pool{rank}d")(
            x, fields["kernel_size"], fields["strides"], fields["padding"],
            fields.get("dilation", 1), ceil_mode=fields.get("ceil_mode", False))
    return getattr(F, f"avg_pool{rank}d")(
        x, fields["kernel_size"], fields["strides"], fields["padding"],
        ceil_mode=fields.get("ceil_mode", False),
        count_include_pad=fields.get("count_include_pad", False))


# (group, spec fields, in channels, spatial size, torch weight shape or None, bias)
CASES: list[tuple[str, dict[str, Any], int, tuple[int, ...], tuple[int, ...] | None, bool]] = [
    ("conv", dict(kernel_size=(3, 3), strides=2, padding=((1, 1), (1, 1)), groups=2,
                  data_format="channels_first"), 4, (7, 6), (6, 2, 3, 3), True),
    ("conv", dict(kernel_size=(2, 3), dilation=(2, 1), padding=((1, 2), (0, 1)),
                  padding_mode="reflect"), 3, (6, 5), (2, 3, 2, 3), False),
    ("conv", dict(kernel_size=(3,), strides=3, padding=((2, 1),), padding_mode="circular",
                  data_format="channels_first"), 2, (8,), (3, 2, 3), True),
    ("conv", dict(kernel_size=(2, 2, 2), strides=(1, 2, 1), padding=((1, 0), (0, 1), (1, 1)),
                  padding_mode="replicate"), 2, (3, 4, 3), (2, 2, 2, 2, 2), True),
    ("conv", dict(kernel_size=(3, 2), dilation=(1, 2), padding="same"), 2, (5, 6),
     (3, 2, 3, 2), True),
    ("conv", dict(kernel_size=(3, 3), strides=(1, 2), padding=((1, 1), (1, 1)), groups=3,
                  data_format="channels_first"), 3, (5, 5), (6, 1, 3, 3), False),
    ("transposed", dict(kernel_size=(3, 2), strides=2, dilation=(1, 2), padding=(1, 1),
                        output_padding=(1, 1), groups=2, transposed=True,
                        data_format="channels_first"), 4, (3, 4), (4, 3, 3, 2), True),
    ("transposed", dict(kernel_size=(2,), strides=3, padding=(0,), transposed=True), 2,
     (4,), (2, 3, 2), True),
    ("transposed", dict(kernel_size=(2, 2, 3), strides=(2, 1, 2), padding=(0, 1, 1),
                        transposed=True), 2, (2, 3, 2), (2, 2, 2, 2, 3), False),
    ("pool", dict(kernel_size=(3, 3), strides=2, dilation=2, padding=((1, 1), (1, 1)),
                  pool="max", ceil_mode=True, data_format="channels_first"), 2, (8, 9), None,
     False),
    ("pool", dict(kernel_size=(3, 2), strides=2, padding=((1, 1), (1, 1)), pool="avg",
                  ceil_mode=True, count_include_pad=True), 2, (6, 5), None, False),
    ("pool", dict(kernel_size=(3, 2), strides=2, padding=((1, 1), (1, 1)), pool="avg",
                  ceil_mode=True, count_include_pad=False), 2, (6, 5), None, False),
    ("pool", dict(kernel_size=(4,), strides=3, padding=((2, 2),), pool="avg",
                  count_include_pad=True, ceil_mode=True), 3, (9,), None, False),
    ("pool", dict(kernel_size=(2, 2, 2), strides=(1, 2, 2), pool="max", ceil_mode=True),
     1, (3, 5, 4), None, False),
]


def _torch_padding(fields: dict[str, Any]) -> Any:
    """Pooling padding for torch: one symmetric int per axis."""
    return tuple(lo for lo, _ in fields.get("padding", ((0, 0),) * len(fields["kernel_size"])))


def main() -> None:
    rng = np.random.default_rng(20240601)
    groups: dict[str, dict[str, np.ndarray]] = {}
    specs: dict[str, list[dict[str, Any]]] = {}
    for group, fields, channels, sizes, weight_shape, use_bias in CASES:
        rank = len(sizes)
        arrays = groups.setdefault(group, {})
        index = len(specs.setdefault(group, []))
        channels_first = fields.get("data_format") == "channels_first"
        x = rng.standard_normal((2, channels, *sizes))
        if group == "pool" and fields["pool"] == "max":
            x = x + np.arange(x.size).reshape(x.shape) * 1e-3  # no ties
        xt = torch.tensor(x, requires_grad=True)
        wt = None if weight_shape is None else torch.tensor(
            rng.standard_normal(weight_shape), requires_grad=True)
        out_channels = None
        if wt is not None:
            out_channels = weight_shape[0] if group == "conv" else (
                weight_shape[1] * fields.get("groups", 1))
        bt = torch.tensor(rng.standard_normal(out_channels), requires_grad=True) if use_bias \
            else None
        if group == "conv":
            yt = _conv(rank, xt, wt, bt, fields)
        elif group == "transposed":
            yt = _transpose(rank, xt, wt, bt, fields)
        else:
            yt = _pool(rank, xt, wt, bt, dict(fields, padding=_torch_padding(fields)))
        dy = rng.standard_normal(tuple(yt.shape))
        yt.backward(torch.tensor(dy))

        def layout(a: np.ndarray, channels_first: bool = channels_first) -> np.ndarray:
            return a if channels_first else np.moveaxis(a, 1, -1)

        arrays[f"{index}_x"] = layout(x)
        arrays[f"{index}_y"] = layout(yt.detach().numpy())
        arrays[f"{index}_dy"] = layout(dy)
        arrays[f"{index}_dx"] = layout(xt.grad.numpy())
        if wt is not None:
            transposed = group == "transposed"
            arrays[f"{index}_kernel"] = kernel_from_torch(wt.detach().numpy(), transposed)
            arrays[f"{index}_dkernel"] = kernel_from_torch(wt.grad.numpy(), transposed)
        if bt is not None:
            arrays[f"{index}_bias"] = bt.detach().numpy()
            arrays[f"{index}_dbias"] = bt.grad.numpy()
        specs[group].append(fields)
    OUT.mkdir(parents=True, exist_ok=True)
    for group, arrays in groups.items():
        path = OUT / f"engine_{group}.npz"
        np.savez_compressed(path, cases=np.array(json.dumps(specs[group])), **arrays)
        print(f"wrote {path} ({path.stat().st_size} bytes, {len(specs[group])} cases)")


if __name__ == "__main__":
    main()
