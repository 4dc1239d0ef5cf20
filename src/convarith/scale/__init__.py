"""Convolutions over arrays larger than memory, tiled with Dask (optional: ``convarith[scale]``).

>>> import dask.array as da, numpy as np
>>> from convarith import ConvSpec
>>> from convarith.scale import conv
>>> x = da.ones((6, 6, 1), dtype="float32", chunks=3)
>>> conv(x, np.ones((3, 3, 1, 1), "float32"), ConvSpec(3)).shape
(4, 4, 1)
"""

from .tiling import AxisPlan, ChunkingWarning, conv, plan_tiles

__all__ = ["conv", "plan_tiles", "AxisPlan", "ChunkingWarning"]
