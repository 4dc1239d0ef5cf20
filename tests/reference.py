"""A slow, obviously-correct reference engine, for tests only.

It loops over output cells and reads each cell's footprint from the spec's
own geometry (:meth:`ResolvedConv.footprint`): no padding arithmetic, no
zero insertion, no kernel flipping of its own. Use it on tiny inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from convarith import ConvSpec


def _channels_last(x: np.ndarray, spec: ConvSpec) -> np.ndarray:
    return np.moveaxis(x, 1, -1) if spec.data_format == "channels_first" else x


def reference_conv(
    x: Any, kernel: Any, spec: ConvSpec, bias: Any = None
) -> np.ndarray:
    """``spec`` on batched ``x`` in float64 by definition (kernel in the engine's layout)."""
    x = np.asarray(x, dtype=np.float64)
    resolved = spec.resolve(x.shape)
    xl = _channels_last(x, spec)
    batch, channels = xl.shape[0], xl.shape[-1]
    if spec.pool is not None:
        y = _reference_pool(xl, spec, resolved)
    else:
        kernel = np.asarray(kernel, dtype=np.float64)
        groups = resolved.groups
        assert groups is not None
        if spec.transposed:
            group_out, _ = kernel.shape[-2:]
            filters = group_out * groups
        else:
            filters = kernel.shape[-1]
            group_out = filters // groups
        group_in = channels // groups
        y = np.zeros((batch, *resolved.output_size, filters))
        for out_index in resolved.positions():
            for tap in resolved.footprint(out_index):
                if tap.source is None:
                    continue
                cell = xl[(slice(None), *tap.source)]  # (batch, channels)
                for g in range(groups):
                    inputs = cell[:, g * group_in:(g + 1) * group_in]
                    if spec.transposed:
                        # kernel (k..., out/groups, in)
                        weights = kernel[tap.kernel][:, g * group_in:(g + 1) * group_in].T
                    else:
                        weights = kernel[tap.kernel][:, g * group_out:(g + 1) * group_out]
                    y[(slice(None), *out_index, slice(g * group_out, (g + 1) * group_out))] += (
                        inputs @ weights
                    )
        if bias is not None:
            y += np.asarray(bias, dtype=np.float64)
    return np.moveaxis(y, -1, 1) if spec.data_format == "channels_first" else y


def _reference_pool(xl: np.ndarray, spec: ConvSpec, resolved: Any) -> np.ndarray:
    batch, channels = xl.shape[0], xl.shape[-1]
    y = np.zeros((batch, *resolved.output_size, channels))
    extent = [n + lo + hi for n, (lo, hi) in zip(resolved.input_size, resolved.padding)]
    for out_index in resolved.positions():
        taps = resolved.footprint(out_index)
        real = [xl[(slice(None), *t.source)] for t in taps if t.source is not None]
        if spec.pool == "max":
            best = np.full((batch, channels), -np.inf)
            for value in real:
                best = np.where((value > best) | np.isnan(value), value, best)
            y[(slice(None), *out_index)] = best
        else:
            if spec.count_include_pad:
                count = sum(all(p < e for p, e in zip(t.position, extent)) for t in taps)
            else:
                count = len(real)
            y[(slice(None), *out_index)] = sum(real) / count
    return y
