"""FFTW for the realtime kernels: batched real FFTs executed from inside ``numba`` code.

The keylock vocoder's largest cost is its FFTs (16 transforms of 2048 points
per hop for a four-stem deck). numba has no FFT; the stretcher's own radix-2^2
kernel is about 3x slower than FFTW on these sizes, so when Debian's
``libfftw3-double3`` is present the stretcher hands its transforms to FFTW.

How
---
Plans are made once, in the constructor of the object that owns the buffers
(FFTW's planner is not thread-safe: a module lock serialises it), for exactly
those buffers; the audio thread then only calls ``fftw_execute(plan)``, which
FFTW documents as thread-safe, and which neither allocates nor locks.
:func:`execute` is a numba intrinsic that calls a C function pointer given as
an integer argument, so kernels that use it keep ``cache=True`` (a ctypes
function referenced as a global would make them uncacheable). Without FFTW,
:func:`available` is False and callers keep their numba FFT.

The library is looked up as ``libfftw3.so.3``; ``ATE_NO_FFTW=1`` disables it
(to measure or test the fallback).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

__all__ = ["available", "execute", "RealFFTPlans"]

_lock = threading.Lock()
_lib = None
_FFTW_MEASURE = 0
_FFTW_DESTROY_INPUT = 1
_doomed: list[int] = []
"""Plans whose owner was collected while the planner lock was held (a garbage collection can run inside
:class:`RealFFTPlans` ``__init__``, on that very thread): destroyed the next time the lock is taken."""


def _destroy_doomed(lib) -> None:
    """Destroy the deferred plans; the caller holds ``_lock``."""
    while _doomed:
        lib.fftw_destroy_plan(_doomed.pop())


def _load():
    global _lib
    if _lib is not None or os.environ.get("ATE_NO_FFTW"):
        return _lib
    name = ctypes.util.find_library("fftw3") or "libfftw3.so.3"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    plan_args = [ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                 ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                 ctypes.c_uint]
    for fn in (lib.fftw_plan_many_dft_r2c, lib.fftw_plan_many_dft_c2r):
        fn.restype = ctypes.c_void_p
        fn.argtypes = plan_args
    lib.fftw_destroy_plan.argtypes = [ctypes.c_void_p]
    lib.fftw_destroy_plan.restype = None
    _lib = lib
    return lib


def available() -> bool:
    """Whether FFTW can be used (library found and not disabled by ``ATE_NO_FFTW``)."""
    return _load() is not None


@intrinsic
def execute(typingctx, function_address, plan_address):
    """Call ``void f(void *plan)`` at ``function_address`` (both int64) from numba code."""
    sig = types.void(types.int64, types.int64)

    def codegen(context, builder, signature, args):
        ptr = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [ptr])
        fn = builder.inttoptr(args[0], fnty.as_pointer())
        builder.call(fn, [builder.inttoptr(args[1], ptr)])
        return context.get_dummy_value()

    return sig, codegen


class RealFFTPlans:
    """A forward and an inverse batched real FFT over fixed buffers.

    Parameters
    ----------
    frames : np.ndarray
        float64 ``(rows, n)``, C-contiguous: the time-domain rows.
    spectra : np.ndarray
        complex128 ``(rows, n // 2 + 1)``, C-contiguous: the spectra.
    forward_rows : tuple of int
        ``(first, count)``: rows of ``frames`` transformed into the same rows of ``spectra``.
    inverse_rows : tuple of int, optional
        ``(first, count)``: rows of ``spectra`` transformed back into the same rows of ``frames``
        (unnormalised, as FFTW does: divide by ``n``; the spectra rows are overwritten). None: no
        inverse plan (its address is 0).

    Attributes
    ----------
    addresses : np.ndarray
        int64 ``[fftw_execute, forward plan, inverse plan]`` for :func:`execute` in a kernel.
    """

    def __init__(self, frames: np.ndarray, spectra: np.ndarray, forward_rows: tuple[int, int],
                 inverse_rows: tuple[int, int] | None = None):
        lib = _load()
        if lib is None:
            raise RuntimeError("engine/fftw.py: libfftw3 is not available (Debian: libfftw3-double3)")
        rows, n = frames.shape
        nk = n // 2 + 1
        if (frames.dtype != np.float64 or spectra.dtype != np.complex128 or spectra.shape != (rows, nk)
                or not frames.flags.c_contiguous or not spectra.flags.c_contiguous):
            raise ValueError("engine/fftw.py: frames must be float64 (rows, n), spectra complex128 (rows, n//2+1)")
        self._frames, self._spectra = frames, spectra   # the plans point into them: keep them alive
        dims = (ctypes.c_int * 1)(n)
        f0, fc = forward_rows
        keep_f, keep_s = frames.copy(), spectra.copy()   # planning with FFTW_MEASURE scribbles on the buffers
        self._inverse = None
        with _lock:
            _destroy_doomed(lib)
            self._forward = lib.fftw_plan_many_dft_r2c(
                1, dims, fc, frames.ctypes.data + f0 * n * 8, None, 1, n,
                spectra.ctypes.data + f0 * nk * 16, None, 1, nk, _FFTW_MEASURE)
            if inverse_rows is not None:
                i0, ic = inverse_rows
                self._inverse = lib.fftw_plan_many_dft_c2r(
                    1, dims, ic, spectra.ctypes.data + i0 * nk * 16, None, 1, nk,
                    frames.ctypes.data + i0 * n * 8, None, 1, n, _FFTW_MEASURE | _FFTW_DESTROY_INPUT)
        frames[:] = keep_f
        spectra[:] = keep_s
        if not self._forward or (inverse_rows is not None and not self._inverse):
            raise RuntimeError("engine/fftw.py: FFTW could not make a plan")
        self._lib = lib
        execute_address = ctypes.cast(lib.fftw_execute, ctypes.c_void_p).value
        self.addresses = np.array([execute_address, self._forward, self._inverse or 0], dtype=np.int64)

    def __del__(self):
        lib = getattr(self, "_lib", None)
        if lib is None or _lock is None:      # _lock is None: the interpreter is shutting down
            return
        self._lib = None
        plans = [p for p in (self._forward, self._inverse) if p]
        # Never wait here: a collection inside __init__ runs this on the thread that holds the lock.
        if not _lock.acquire(blocking=False):
            _doomed.extend(plans)
            return
        try:
            _destroy_doomed(lib)
            for plan in plans:
                lib.fftw_destroy_plan(plan)
        finally:
            _lock.release()
