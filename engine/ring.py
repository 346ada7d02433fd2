"""A frame ring between the engine's render thread and a device callback that never takes the GIL.

The Python audio callback of :class:`engine.output.AudioOutput` needs the GIL
for every block: while another thread of the engine process holds it (the
request thread parsing a command, a garbage collection) or is preempted while
holding it, the device waits, and on a 2.9 ms block that is an xrun. With
``ahead_blocks`` set, the output runs the other way round, as
python-rtmixer does with a C callback: PortAudio calls
:data:`device_callback`, a ``numba`` ``cfunc`` that copies the next frames
from a :class:`FrameRing` and returns (no Python, no GIL, no allocation, no
lock: 1.5 µs on JACK here, plus about 15 µs to wake the render thread), and
a render thread keeps the ring filled
``ahead_blocks`` blocks ahead with :meth:`Engine.process
<engine.core.Engine.process>`. The render thread may then be held off for up to
``ahead_blocks`` block periods without a gap in the sound; the price is the same
amount of added output latency. When the ring runs dry the callback plays
silence for that block and counts an underrun (what the listener hears as an
xrun); the ring's reader never skips, so the engine's samples still come out
in order, identical to an offline render.

Synchronisation is a single-producer single-consumer ring: the writer copies a
block in and then publishes it by storing the new write count; the reader
loads the write count, copies out and stores its read count. Fences
(:func:`_fence`) order the stores on every architecture. The callback wakes the
render thread through a POSIX semaphore (``sem_post`` is async-signal-safe and
never blocks); the render thread waits on it in ``sem_wait``, which ``ctypes``
calls without the GIL.

The control words (:data:`CTL_WORDS` ``int64``; the semaphore lives in the
first four) are read from Python for the report: counts of callbacks,
underruns, PortAudio's status flags, the lowest fill seen at a callback.
"""

from __future__ import annotations

import ctypes
import os

import numba
import numpy as np
from numba import carray, types
from numba.extending import intrinsic

__all__ = ["FrameRing", "device_callback", "CALLBACK_FLAGS"]

# Control words. 0-3 hold the sem_t (32 bytes on glibc x86-64 and aarch64).
_SEM_WORDS = 4
WRITTEN = _SEM_WORDS  # frames written, ever (the writer's word)
READ = 5             # frames read, ever (the reader's word)
DATA_ADDRESS = 6     # address of the float32 sample ring
CAPACITY = 7         # frames the ring holds
CHANNELS = 8
CALLBACKS = 9
UNDERRUNS = 10       # callbacks that found fewer frames than they needed: silence played
FRAMES_PLAYED = 11   # frames the device was given from the ring (silence not counted)
MIN_FILL = 12        # lowest fill found at a callback, frames (before it read)
FRAMES_MIN = 13      # smallest and largest frames per callback
FRAMES_MAX = 14
FLAG_COUNTS = 15     # 5 words: PortAudio status flags, in CALLBACK_FLAGS order
AT_SLOTS = 64        # callback indices kept of each kind of late callback
UNDERRUN_AT = 20     # callback indices of the first AT_SLOTS underruns
XRUN_AT = UNDERRUN_AT + AT_SLOTS      # ... and of the first AT_SLOTS callbacks with an xrun flag
XRUN_CALLBACKS = XRUN_AT + AT_SLOTS   # callbacks with an xrun flag
BLOCK_FRAMES = XRUN_CALLBACKS + 1   # frames per callback asked for (0: any)
IRREGULAR = BLOCK_FRAMES + 1        # callbacks that asked for other than BLOCK_FRAMES
DEVICE_POLICY = IRREGULAR + 1       # the device thread's scheduling policy, seen in the first callback (-1: not yet)
DEVICE_PRIORITY = DEVICE_POLICY + 1  # its sched_priority (the low 4 bytes: a struct sched_param)
CALLBACK_NS_MAX = DEVICE_PRIORITY + 1   # the callback's longest run and all its runs, ns (CLOCK_MONOTONIC)
CALLBACK_NS_TOTAL = CALLBACK_NS_MAX + 1
CLOCK_SCRATCH = CALLBACK_NS_TOTAL + 1   # 2 words: a struct timespec
CTL_WORDS = CLOCK_SCRATCH + 2

_CLOCK_MONOTONIC = 1

CALLBACK_FLAGS = ("input_underflow", "input_overflow", "output_underflow", "output_overflow", "priming_output")
"""PortAudio's ``PaStreamCallbackFlags`` bits 0-4, in order."""
_XRUN_BITS = 0b01111

_libc = ctypes.CDLL(None, use_errno=True)
# For the callback, a symbol resolved when the function is linked (a ctypes pointer would stop numba caching it).
_sem_post = types.ExternalFunction("sem_post", types.int32(types.voidptr))
_sched_getscheduler = types.ExternalFunction("sched_getscheduler", types.int32(types.int32))
_sched_getparam = types.ExternalFunction("sched_getparam", types.int32(types.int32, types.voidptr))
_clock_gettime = types.ExternalFunction("clock_gettime", types.int32(types.int32, types.voidptr))
_sem_wait = _libc.sem_wait
_sem_wait.argtypes = [ctypes.c_void_p]
_sem_wait.restype = ctypes.c_int
_sem_post_from_python = _libc.sem_post
_sem_post_from_python.argtypes = [ctypes.c_void_p]
_sem_post_from_python.restype = ctypes.c_int
_sem_init = _libc.sem_init
_sem_init.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint]
_sem_destroy = _libc.sem_destroy
_sem_destroy.argtypes = [ctypes.c_void_p]


@intrinsic
def _as_pointer(typingctx, address):
    """``(void *) address``: the ring's samples, whose address is stored in a control word."""
    sig = types.voidptr(types.int64)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.voidptr))

    return sig, codegen


@intrinsic
def _fence(typingctx):
    """A sequentially consistent memory fence (orders the ring's data against its counters)."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(nogil=True, cache=True)
def _ring_write(ctl, data, block, n_frames):
    """Append ``block[:n_frames]`` (the caller checked the room) and publish it."""
    capacity = ctl[CAPACITY]
    channels = ctl[CHANNELS]
    written = ctl[WRITTEN]
    pos = written % capacity
    for i in range(n_frames):
        base = pos * channels
        for c in range(channels):
            data[base + c] = block[i, c]
        pos += 1
        if pos == capacity:
            pos = 0
    _fence()
    ctl[WRITTEN] = written + n_frames


_CALLBACK_SIG = types.int32(types.voidptr, types.CPointer(types.float32), types.uint64, types.voidptr,
                            types.uint64, types.voidptr)


@numba.njit(inline="always")
def _word_pointer(ctl, word):
    """``&ctl[word]``, for the C functions that write a struct there."""
    return _as_pointer(ctl.ctypes.data + 8 * word)


@numba.njit(inline="always")
def _now_ns(ctl):
    """CLOCK_MONOTONIC in ns (through the vDSO: no system call, no lock)."""
    _clock_gettime(_CLOCK_MONOTONIC, _word_pointer(ctl, CLOCK_SCRATCH))
    return ctl[CLOCK_SCRATCH] * 1_000_000_000 + ctl[CLOCK_SCRATCH + 1]


@numba.cfunc(_CALLBACK_SIG, nopython=True, cache=True)
def device_callback(input_buffer, output, frame_count, time_info, status_flags, user_data):
    """The PortAudio ``PaStreamCallback`` (at ``device_callback.address``); its ``userData`` is
    :attr:`FrameRing.address`."""
    ctl = carray(user_data, (CTL_WORDS,), np.int64)
    start_ns = _now_ns(ctl)
    n = np.int64(frame_count)
    channels = ctl[CHANNELS]
    capacity = ctl[CAPACITY]
    index = ctl[CALLBACKS]
    if index == 0:
        # pid 0: the calling thread. The render thread places itself under it (see FrameRing.device_priority).
        _sched_getparam(0, _word_pointer(ctl, DEVICE_PRIORITY))
        ctl[DEVICE_POLICY] = _sched_getscheduler(0)
    if status_flags & _XRUN_BITS:
        xruns = ctl[XRUN_CALLBACKS]
        if xruns < AT_SLOTS:
            ctl[XRUN_AT + xruns] = index
        ctl[XRUN_CALLBACKS] = xruns + 1
    for bit in range(5):
        if status_flags & (1 << bit):
            ctl[FLAG_COUNTS + bit] += 1
    if index == 0 or n < ctl[FRAMES_MIN]:
        ctl[FRAMES_MIN] = n
    if n > ctl[FRAMES_MAX]:
        ctl[FRAMES_MAX] = n
    if ctl[BLOCK_FRAMES] and n != ctl[BLOCK_FRAMES]:
        ctl[IRREGULAR] += 1
    written = ctl[WRITTEN]
    _fence()
    read = ctl[READ]
    fill = written - read
    if index == 0 or fill < ctl[MIN_FILL]:
        ctl[MIN_FILL] = fill
    if fill >= n:
        data = carray(_as_pointer(ctl[DATA_ADDRESS]), (capacity * channels,), np.float32)
        pos = read % capacity
        k = 0
        for i in range(n):
            base = pos * channels
            for c in range(channels):
                output[k] = data[base + c]
                k += 1
            pos += 1
            if pos == capacity:
                pos = 0
        _fence()
        ctl[READ] = read + n
        ctl[FRAMES_PLAYED] += n
    else:
        for k in range(n * channels):
            output[k] = 0.0
        underruns = ctl[UNDERRUNS]
        if underruns < AT_SLOTS:
            ctl[UNDERRUN_AT + underruns] = index
        ctl[UNDERRUNS] = underruns + 1
    ctl[CALLBACKS] = index + 1
    _sem_post(user_data)
    took_ns = _now_ns(ctl) - start_ns
    ctl[CALLBACK_NS_TOTAL] += took_ns
    if took_ns > ctl[CALLBACK_NS_MAX]:
        ctl[CALLBACK_NS_MAX] = took_ns
    return 0


class FrameRing:
    """Interleaved float32 frames from one writer thread to one GIL-free reader (see the module docstring).

    Parameters
    ----------
    capacity_frames : int
        Frames the ring holds.
    channels : int
        Interleaved channels per frame.
    block_frames : int
        Frames per callback the stream was opened with (0: any); other sizes are counted as irregular.
    """

    def __init__(self, capacity_frames: int, channels: int, block_frames: int = 0):
        self._closed = True        # until the semaphore exists
        if capacity_frames < 1 or channels < 1:
            raise ValueError(f"ring: capacity {capacity_frames} frames x {channels} channels")
        self.capacity_frames = int(capacity_frames)
        self.channels = int(channels)
        self.ctl = np.zeros(CTL_WORDS, np.int64)
        self.data = np.zeros(self.capacity_frames * self.channels, np.float32)
        self.ctl[DATA_ADDRESS] = self.data.ctypes.data
        self.ctl[CAPACITY] = self.capacity_frames
        self.ctl[CHANNELS] = self.channels
        self.ctl[BLOCK_FRAMES] = block_frames
        self.ctl[DEVICE_POLICY] = -1
        if _sem_init(self.address, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "ring: sem_init failed")
        self._closed = False
        # Compile (or load) the writer now, not in the render thread's first block.
        _ring_write(self.ctl, self.data, np.zeros((1, self.channels), np.float32), 0)

    @property
    def address(self) -> int:
        """Address of the control words: the callback's ``userData``."""
        return self.ctl.ctypes.data

    def fill_frames(self) -> int:
        """Frames written and not yet read."""
        return int(self.ctl[WRITTEN] - self.ctl[READ])

    def write(self, block: np.ndarray, n_frames: int | None = None) -> None:
        """Append ``block[:n_frames]`` (float32 ``(frames, channels)``); the caller keeps within the room."""
        n = block.shape[0] if n_frames is None else n_frames
        if self.fill_frames() + n > self.capacity_frames:
            raise ValueError(f"ring: {n} frames do not fit ({self.fill_frames()} of {self.capacity_frames} used)")
        _ring_write(self.ctl, self.data, block, n)

    def wait(self) -> None:
        """Block (without the GIL) until the reader has taken frames or :meth:`wake` is called."""
        while _sem_wait(self.address) != 0:
            if ctypes.get_errno() != 4:     # EINTR: a signal; wait again
                raise OSError(ctypes.get_errno(), "ring: sem_wait failed")

    def wake(self) -> None:
        """Wake a thread in :meth:`wait` (as a read does)."""
        _sem_post_from_python(self.address)

    def device_priority(self) -> int | None:
        """The ``SCHED_FIFO``/``SCHED_RR`` priority of the thread that calls the device callback, once it has
        run (None: not yet, or not real-time)."""
        if int(self.ctl[DEVICE_POLICY]) not in (os.SCHED_FIFO, os.SCHED_RR):
            return None
        return int(self.ctl[DEVICE_PRIORITY] & 0xFFFFFFFF)

    def counters(self) -> dict:
        """The reader's counters: ``callbacks``, ``underruns``, ``underrun_callbacks_at`` (first 64),
        ``xrun_callbacks`` (PortAudio xrun flags), ``xrun_callbacks_at``, ``flags`` (count per PortAudio
        status flag), ``frames_played``, ``min_fill_frames``, ``frames_per_callback_min``/``max``,
        ``irregular_callbacks``, ``callback_us_max``/``mean`` (the callback's own run time, µs)."""
        ctl = self.ctl.copy()
        underruns = int(ctl[UNDERRUNS])
        xruns = int(ctl[XRUN_CALLBACKS])
        return {"callbacks": int(ctl[CALLBACKS]), "underruns": underruns,
                "underrun_callbacks_at": [int(i) for i in ctl[UNDERRUN_AT:UNDERRUN_AT + min(underruns, AT_SLOTS)]],
                "xrun_callbacks": xruns,
                "xrun_callbacks_at": [int(i) for i in ctl[XRUN_AT:XRUN_AT + min(xruns, AT_SLOTS)]],
                "flags": {name: int(ctl[FLAG_COUNTS + bit]) for bit, name in enumerate(CALLBACK_FLAGS)},
                "frames_played": int(ctl[FRAMES_PLAYED]), "min_fill_frames": int(ctl[MIN_FILL]),
                "frames_per_callback_min": int(ctl[FRAMES_MIN]), "frames_per_callback_max": int(ctl[FRAMES_MAX]),
                "irregular_callbacks": int(ctl[IRREGULAR]),
                "callback_us_max": round(float(ctl[CALLBACK_NS_MAX]) / 1e3, 2),
                "callback_us_mean": round(float(ctl[CALLBACK_NS_TOTAL]) / 1e3 / max(int(ctl[CALLBACKS]), 1), 3)}

    def close(self) -> None:
        """Destroy the semaphore (no thread may be waiting on it, no stream calling back)."""
        if not self._closed:
            self._closed = True
            _sem_destroy(self.address)

    def __del__(self):
        self.close()
