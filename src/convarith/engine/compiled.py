"""Which compiled (llvmlite) kernels the engine runs here, for a benchmark's header.

The kernels are made for one vector instruction set, picked with the
environment variable :data:`VECTOR_ISA_VARIABLE` (``CONVARITH_VECTOR_ISA``,
read at each call) among :data:`VECTOR_ISA_NAMES`; ``native`` (the default)
is what this CPU has. ``CONVARITH_JIT=0``, a missing llvmlite or a CPU without
the instructions leave the engine on its NumPy and numba paths.

Examples
--------
>>> VECTOR_ISA_NAMES[0]
'native'
>>> description = compiled_kernels_description()
>>> description is None or "-bit vectors" in description
True
"""

from __future__ import annotations

from .algorithms import _llvm

__all__ = ["VECTOR_ISA_VARIABLE", "VECTOR_ISA_NAMES", "compiled_kernels_description"]

#: The environment variable that picks the instruction set the kernels are made for.
VECTOR_ISA_VARIABLE = _llvm.ISA_VARIABLE

#: Its values: ``native`` (the default: what this CPU has), ``avx2``, ``avx512``, ``neon``.
VECTOR_ISA_NAMES = _llvm.ISA_NAMES


def compiled_kernels_description() -> str | None:
    """The instruction set the compiled kernels are made for, in words, or ``None``.

    ``None`` when no compiled kernel runs here (``CONVARITH_JIT=0``, no
    llvmlite, or the chosen instruction set missing on this CPU).

    Examples
    --------
    >>> text = compiled_kernels_description()   # e.g. 'avx2 (256-bit vectors)'
    >>> text is None or text.endswith("-bit vectors)")
    True
    """
    if not _llvm.available():
        return None
    target = _llvm.vector_target()
    return f"{target.name} ({target.vector_bytes * 8}-bit vectors)"
