"""Model files in, a framework-neutral layer graph out.

:func:`read_model` picks the reader by the file's extension: ``.keras``
(:mod:`.keras_file`, the zip's ``config.json`` only), ``.onnx``
(:mod:`.onnx_file`, needs the optional ``onnx`` package), ``.yaml``/``.yml``/
``.json`` (:mod:`.layers_file`, a small list of layers), legacy Keras ``.h5``
(``model_config`` only, needs h5py), ``.pt2`` (a saved ``torch.export``
program, needs torch).

Examples
--------
>>> import json, os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "net.json")
>>> _ = open(path, "w").write(json.dumps({"input": [28, 28, 1], "layers": ["Conv2D(8, 3)"]}))
>>> [layer.kind for layer in read_model(path).layers]
['input', 'conv']
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from .graph import LayerNode, ModelGraph

__all__ = ["read_model", "LayerNode", "ModelGraph"]

_READERS = {".keras": "keras", ".h5": "h5", ".hdf5": "h5", ".pt2": "pt2", ".onnx": "onnx", ".yaml": "layers", ".yml": "layers", ".json": "layers"}


def read_model(path: str | os.PathLike[str], input_size: Sequence[int] | None = None) -> ModelGraph:
    """The layer graph of a ``.keras``, ``.onnx``, ``.yaml``/``.yml`` or ``.json`` file.

    ``input_size`` (spatial sizes) is used by readers whose shapes are worked
    out while reading (ONNX shape inference); pass the same to
    :func:`convarith.summary.summarize`.
    """
    name = os.fspath(path)
    extension = os.path.splitext(name)[1].lower()
    reader = _READERS.get(extension)
    if reader is None:
        raise ValueError(f"model file {name!r}: the extension {extension or '(none)'!r} is not one "
                         f"convarith reads; use {', '.join(_READERS)}")
    from .keras_file import check_model_file

    check_model_file(name)
    if reader == "keras":
        from .keras_file import read_keras

        return read_keras(name)
    if reader == "pt2":
        from .torch_module import read_pt2

        return read_pt2(name)
    if reader == "h5":
        from .keras_file import read_keras_h5

        return read_keras_h5(name)
    if reader == "onnx":
        from .onnx_file import read_onnx

        return read_onnx(name, input_size)
    from .layers_file import read_layers

    return read_layers(name)
