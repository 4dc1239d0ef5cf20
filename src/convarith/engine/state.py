"""The engine's process state: every cache, what it is keyed on, what invalidates it.

The engine computes the same result whatever these hold; they only save time.
All are safe under concurrent first use (several threads making their first
call at once get the results of a serial run, bit for bit), and
:func:`clear_caches` empties them all.

=====================  ============================================  ==========================================
state                  keyed on / holds                              invalidated by
=====================  ============================================  ==========================================
algorithm registry     name -> algorithm (``dispatch._REGISTRY``),   ``register_algorithm`` /
                       loaded once under a lock                      ``unregister_algorithm`` (not a cache:
                                                                     :func:`clear_caches` leaves it)
remembered choices     (problem, kind or question, exact-only,       any registration (a choice computed while
                       worker count, workspace budget) -> algorithm  the registry changed is not kept);
                       (``dispatch._CHOICES``, at most 4096)         emptied when full
remembered plans       (call's arguments, each array's shape,        as the remembered choices
                       strides and dtype, worker count, workspace
                       budget) -> checked problem and algorithm;
                       for a whole ``conv`` call (spec, algorithm,
                       max_output_values, x, kernel, bias) ->
                       ``core.CallPlan``: what ``prepare`` derived,
                       the algorithm plan and that plan bound to
                       its arguments (``Algorithm.bind``)
                       (``dispatch._PLANS``, at most 1024)
autotune files         cache file path -> {problem key: algorithm}   the files are read again after
                       (``autotune._FILES``; the files themselves    :func:`clear_caches`; entries kept
                       are in the user's cache directory)            per file at most 4096
gradient modes         a backward problem's shapes -> how its two     nothing (timed on its first calls;
                       gradients run, side by side or one after the  at most 4096 problems, the oldest
                       other (``gradient_modes._CHOICES``)           half dropped past that)
resolved specs         (spec, input shape) -> ``ResolvedConv``       nothing (pure; LRU of 1024)
                       (``spec._resolve_remembered``)
functional specs       the ``conv2d``/``max_pool``/... helpers'      nothing (pure; LRU of 256)
                       arguments (exact ints, strings, None, bools)
                       -> ``ConvSpec`` (``api._remembered_spec``)
kernel layouts         register_tiles ``_layout``: shape, dtype,     nothing (pure; LRU of 256)
                       dilation, row length, panel bytes
kernel call tables     register_tiles ``_call_table``, thin_call     nothing (pure; LRUs of 256
                       ``_pieces_plan``, ``one_call_plan``,          and 128)
                       ``shared_plan``: shapes, strides, padding,
                       target, workers -> the calls with the
                       arrays' addresses taken out
prepacked kernels      a frozen kernel (``prepacked.prepack``: its   nothing (the kernel cannot change);
                       immutable owner, address, shape, strides,     least recently used dropped beyond
                       dtype) and its packing -> the packed panels   ``prepacked.KEEP_BYTES`` (512 MiB)
                       (register_tiles) or transformed kernel        for kernels no one else holds
                       (Winograd), flipped kernel (``core.flipped``,
                       itself frozen) or grouped output phases'
                       panels (``prepacked._REMEMBERED``); each
                       live frozen kernel's key, dropped as it dies
                       (``_REMEMBERED.keys``, ``KEYS_KEPT``)
grouped forward plans  grouped_tiles ``_forward_plan``: shapes,      nothing (pure; LRU of 256)
                       strides, padding, target, threads -> calls,
                       panel layout, chunks of output
grouped forward        a grouped call's shapes, settings, target,    nothing (pure; at most 256, all
runners                workers and kind of kernel -> its plan's      dropped past that)
                       table runner, or None (``grouped_tiles._FAST``)
grouped gradient       grouped_tiles ``_remembered_starts``: a       nothing (pure; LRU of 32)
offsets                kernel gradient's output cells -> where each
                       one's window starts (read-only int64)
grouped phase plans    grouped_phases ``_plan``: shapes, strides,     nothing (pure; LRU of 32)
                       padding, target -> a strided grouped
                       transposed convolution's calls and where
                       each packed kernel element comes from
depthwise tile plans   depthwise ``_tiles_plan``, ``_phases_plan``:  nothing (pure; LRU of 256, 128);
                       shapes, strides, padding, target, jobs ->     the compiled loop that runs them
                       the row modules' calls; the loop that runs    as the compiled kernels
                       them (``_llvm_depthwise._call_runner``)
col2im plans           per-axis gather tables (``col2im._axis_plan``)  nothing (pure; LRU of 64)
space-to-depth plans   kernel/stride/dilation -> plan                nothing (pure; LRU of 256)
                       (``space_to_depth.plan``)
flat-rows plans        padded size, kernel, stride, dilation ->      nothing (pure; LRU of 256)
                       phases, grid, taps' shifts (``flat_rows._plan``)
Winograd matrices      ``winograd.transform(m)``, its growth bound   nothing (constants)
Winograd call tables   shapes, kept kernel transform, workspaces,    nothing (the transform and the
                       workers -> the compiled calls of a shared-    workspaces are in the key; at most
                       tiles call on the helpers                     64, the oldest dropped)
                       (``winograd._NATIVE_TABLES``)
compiled kernels       numba kernels (col2im, depthwise, flat_rows,  ``CONVARITH_JIT`` and the installed
                       space_to_depth, winograd, pooling,            packages are read at the first call:
                       batch_as_channels), llvmlite modules
                       (``_llvm._compiled``, ``_compiled_grouped``,  clear to read them again
                       ``_compiled_interleaved``, ``_compiled_spread``,
                       ``_llvm_depthwise._row_kernel``, ``_grad_kernel``,
                       ``_llvm_thin._compiled_rows``,
                       ``_llvm_pointwise._compiled``,
                       ``_llvm_pointwise_grad._compiled``,
                       ``_llvm_pool._pool_kernel`` (and by ISA
                       setting ``_pool_kernel_for``; the global
                       average's ``_global_average``,
                       ``_global_average_for``, its table filler
                       ``table_filler``), the transposes
                       (``_llvm_transpose._transposer``, by ISA
                       setting ``_transposer_for``), the helper
                       threads' spinner ``_spin.spinner``, the
                       tables' runner ``_native_jobs._rows_runner`` (and
                       row filler ``_padded_rows_filler``), the host,
                       the binding),
                       SciPy's BLAS gemm; built once per key under
                       a lock (:func:`cached_once`)
BLAS controller        threadpoolctl's view of the loaded BLAS       BLAS libraries loaded later;
                       libraries; libc's ``sched_getcpu``; the       ``os.sched_setaffinity`` (clear to read
                       process's core count (``_affinity_cores``)    the cores again)
helper threads         one pool per process, one thread per core     a fork (the child makes its own);
                       but the caller's (``_threads._POOL``)         :func:`clear_caches` lets them end
per-thread buffers     each thread's scratch arrays by name, up to   a larger request replaces one;
                       ``WORKSPACE_KEEP_BYTES`` each                 :func:`clear_caches` drops the calling
                       (``_threads.workspace``)                      thread's
output buffers         outputs of 32 MiB or more that their arrays   nothing (a buffer is taken only when
                       handed back when dropped, up to 4 and         no array uses it);
                       512 MiB (``_outputs._FREE``)                  :func:`clear_caches` drops them
=====================  ============================================  ==========================================

Examples
--------
>>> import numpy as np
>>> import convarith
>>> x = np.ones((1, 4, 4, 1), np.float32)
>>> y = convarith.conv2d(x, np.ones((3, 3, 1, 1), np.float32))
>>> clear_caches()
>>> bool((convarith.conv2d(x, np.ones((3, 3, 1, 1), np.float32)) == y).all())
True
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["cached_once", "clear_caches", "process_caches"]

F = TypeVar("F", bound=Callable[..., Any])


def environment(name: str) -> str:
    """``os.environ.get(name, "")``, read from ``os.environ``'s own mapping where it has
    one (POSIX: ``os.environ._data``, which ``os.environ[...] =`` and ``putenv`` through
    it update): 0.03 µs against 1.3 µs for a name that is not set (``get`` raises and
    catches a ``KeyError``), paid by every engine call for its settings
    (``CONVARITH_NUM_THREADS``, ``CONVARITH_VECTOR_ISA``).

    >>> environment("CONVARITH_A_NAME_NOBODY_SETS")
    ''
    """
    data = getattr(os.environ, "_data", None)
    if os.name == "posix" and type(data) is dict:
        value = data.get(name.encode())  # an ASCII name: its file-system encoding
        return "" if value is None else os.fsdecode(value)
    return os.environ.get(name, "")


def cached_once(fn: F) -> F:
    """``functools.cache`` that computes each key once, even under concurrent first calls.

    For builders that are slow or not safe to run twice at once (compiling a
    kernel, initialising a compiler): a second thread asking for the same key
    waits for the first one's result. ``cache_clear`` empties it.

    >>> calls = []
    >>> @cached_once
    ... def square(n):
    ...     calls.append(n)
    ...     return n * n
    >>> square(3), square(3), calls
    (9, 9, [3])
    """
    cached = functools.cache(fn)
    lock = threading.RLock()
    # results already computed, read without the lock (a dict read is atomic): a hit
    # costs ~0.1 µs, not the ~0.5 µs of taking the lock, on every engine call
    known: dict[Any, Any] = {}

    @functools.wraps(fn)
    def once(*args: Any, **kwargs: Any) -> Any:
        key = (args, tuple(kwargs.items())) if kwargs else args
        try:
            return known[key]
        except (KeyError, TypeError):  # not computed yet, or arguments cache cannot hold
            pass
        with lock:
            value = cached(*args, **kwargs)
        with contextlib.suppress(TypeError):
            known[key] = value
        return value

    def clear() -> None:
        with lock:
            known.clear()
            cached.cache_clear()

    once.cache_clear = clear  # type: ignore[attr-defined]
    once.cache_info = cached.cache_info  # type: ignore[attr-defined]
    return once  # type: ignore[return-value]


def process_caches() -> dict[str, Callable[[], None]]:
    """Each cache of the table above by name, with the function that empties it."""
    from .. import spec
    from . import api, autotune, dispatch, gradient_modes
    from .algorithms import (
        _llvm,
        _llvm_depthwise,
        _llvm_pointwise,
        _llvm_pointwise_grad,
        _llvm_pool,
        _llvm_thin,
        _llvm_transpose,
        _native_jobs,
        _numba_pool,
        _outputs,
        _spin,
        _threads,
        batch_as_channels,
        col2im,
        depthwise,
        flat_rows,
        grouped_phases,
        grouped_tiles,
        prepacked,
        register_tiles,
        space_to_depth,
        thin_call,
        winograd,
    )

    def functions(*cached: Any) -> Callable[[], None]:
        def clear() -> None:
            for function in cached:
                function.cache_clear()

        return clear

    return {
        "remembered choices": dispatch._CHOICES.clear,
        "remembered plans": dispatch._PLANS.clear,
        "autotune files": autotune.clear,
        "gradient modes": gradient_modes.clear,
        "resolved specs": functions(spec._resolve_remembered),
        "functional specs": functions(api._remembered_spec),
        "kernel layouts": functions(register_tiles._layout),
        "kernel call tables": functions(register_tiles._call_table, thin_call._pieces_plan,
                                        thin_call.one_call_plan, thin_call.shared_plan),
        "prepacked kernels": prepacked.clear,
        "grouped forward plans": functions(grouped_tiles._forward_plan),
        "grouped forward runners": grouped_tiles._FAST.clear,
        "grouped gradient offsets": functions(grouped_tiles._remembered_starts),
        "grouped phase plans": functions(grouped_phases._plan),
        "depthwise tile plans": functions(depthwise._tiles_plan, depthwise._phases_plan,
                                          _llvm_depthwise._call_runner),
        "col2im plans": functions(col2im._axis_plan),
        "space-to-depth plans": functions(space_to_depth.plan),
        "flat-rows plans": functions(flat_rows._plan),
        "Winograd matrices": functions(winograd.transform, winograd._transform_gain),
        "Winograd call tables": winograd._NATIVE_TABLES.clear,
        "compiled kernels": functions(
            col2im._numba_gather, col2im._numba_joint_rows, depthwise._numba_kernels,
            flat_rows._numba_gather,
            flat_rows._numba_im2col, flat_rows.blas_gemm, space_to_depth._numba_kernels,
            winograd._numba_kernels, _llvm._compiled, _llvm._target, _llvm._host, _llvm._llvm,
            _llvm._compiled_grouped, _llvm._compiled_interleaved, _llvm._compiled_spread,
            _llvm_depthwise._row_kernel, _llvm_depthwise._grad_kernel,
            _llvm_thin._compiled_rows, _llvm_pointwise._compiled, _llvm_pool._pool_kernel,
            _llvm_pointwise_grad._compiled,
            _llvm_pool._pool_kernel_for, _llvm_pool._global_average,
            _llvm_pool._global_average_for, _llvm_pool.table_filler,
            _llvm_transpose._transposer, _llvm_transpose._transposer_for,
            _numba_pool.numba_kernels, batch_as_channels._numba_swap,
            _spin.spinner, _native_jobs._rows_runner, _native_jobs._padded_rows_filler,
            winograd._table_transforms,
            _native_jobs._padded_channels_filler),
        "BLAS controller": functions(_threads._controller, _threads._blas_libraries,
                                     _threads._sched_getcpu,
                                     _threads._affinity_cores),
        "helper threads": _threads._POOL.clear,
        "per-thread buffers": _threads.clear_workspaces,
        "output buffers": _outputs.clear,
    }


def clear_caches() -> None:
    """Empty every cache of the engine (the table above); the registry stays.

    The next calls rebuild what they need (compiling kernels again, ~1 s with
    numba). Do not call it while another thread runs the engine.
    """
    for clear in process_caches().values():
        clear()
