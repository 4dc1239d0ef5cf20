"""Every layer class of :mod:`convarith.nn` by its Keras class name.

>>> "Conv3DTranspose" in LAYERS and "Concatenate" in LAYERS
True
"""

from __future__ import annotations

from . import merging, reshaping
from .layers import LAYERS as _BASE
from .layers import Layer

__all__ = ["LAYERS"]

LAYERS: dict[str, type[Layer]] = {
    **_BASE,
    **{name: getattr(reshaping, name) for name in reshaping.__all__},
    **{name: getattr(merging, name) for name in merging.__all__},
}
