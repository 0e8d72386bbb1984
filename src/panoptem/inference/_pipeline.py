"""Overlap the stages of a stack: reading ahead in one thread, decoding and linking
behind the network in another, each fed through a bounded queue. The order of the
work never changes, so the results are those of the sequential run (tested).

When the network runs on the CPU, the threads behind it run at a lower scheduling priority
(:func:`yield_to_network`): they then take the cycles the network's threads leave idle
instead of stalling them."""
from __future__ import annotations

import os
import queue
import sys
import threading
import time
from typing import Callable, Iterable, Iterator

_END = object()
#: guards the timing totals: overlapped stages (and stacks) add to the same keys
_TIMINGS_LOCK = threading.Lock()


#: niceness of the threads behind a network that runs on the CPU (Linux's scale: 0 normal,
#: 19 lowest). A core shared with a network thread at 0 gives such a thread about a tenth.
BEHIND_NETWORK_NICE = 10


def yield_to_network() -> bool:
    """Lower the calling thread's priority to :data:`BEHIND_NETWORK_NICE` (Linux, where
    niceness is per thread; elsewhere nothing). The network's intra-op threads split each
    operation evenly between the cores, so a decoding thread that takes a core from one of
    them stalls them all; at a lower priority it runs in the gaps the network leaves. Returns
    whether the priority was lowered. A thread cannot raise its priority again: call this
    only in threads made for the work behind the network."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), BEHIND_NETWORK_NICE))
    except OSError:  # e.g. a sandbox that forbids it: the work runs at normal priority
        return False
    return True


class StageClock:
    """Accumulates wall seconds (``<stage>_s``) and, with ``cpu``, this process's CPU seconds
    (``<stage>_cpu_s``) per stage into a timings dict. CPU seconds are exact only when the
    stages do not overlap (a sequential run); reading the process's CPU clock is a system
    call that costs up to about 0.1 ms while other threads run, so overlapped runs, which
    time thousands of thin planes, leave it out."""

    def __init__(self, timings: dict, cpu: bool = True):
        self.timings, self.cpu = timings, cpu

    def __call__(self, stage: str) -> "_Timed":
        return _Timed(self.timings, stage, self.cpu)


class _Timed:
    def __init__(self, tm: dict, stage: str, cpu: bool):
        self.tm, self.stage, self.cpu = tm, stage, cpu

    def __enter__(self):
        self.t = time.perf_counter()
        self.c = time.process_time() if self.cpu else 0.0
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.t
        cpu = time.process_time() - self.c if self.cpu else 0.0
        with _TIMINGS_LOCK:
            key = f"{self.stage}_s"
            self.tm[key] = self.tm.get(key, 0.0) + wall
            if self.cpu:
                key = f"{self.stage}_cpu_s"
                self.tm[key] = self.tm.get(key, 0.0) + cpu


class Prefetch:
    """Iterate over ``fn(x)`` for ``x`` in ``items``, computed up to ``depth`` items
    ahead in a thread (``threaded=False``: computed when asked); ``yielding``: the thread
    yields to the network (:func:`yield_to_network`)."""

    def __init__(self, fn: Callable, items: Iterable, depth: int = 1, threaded: bool = True,
                 yielding: bool = False):
        self.fn, self.items, self.yielding = fn, list(items), yielding
        self._stop = threading.Event()
        self._q: queue.Queue | None = None
        if threaded and self.items:
            self._q = queue.Queue(maxsize=max(1, depth))
            self._thread = threading.Thread(target=self._run, name="panoptem-read", daemon=True)
            self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        if self.yielding:
            yield_to_network()
        try:
            for x in self.items:
                if not self._put((True, self.fn(x))):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._put((False, e))
            return
        self._put((True, _END))

    def __iter__(self) -> Iterator:
        if self._q is None:
            for x in self.items:
                yield self.fn(x)
            return
        while True:
            ok, v = self._q.get()
            if not ok:
                raise v
            if v is _END:
                return
            yield v

    def close(self) -> None:
        """Stop reading ahead (waits for the read in progress)."""
        self._stop.set()
        if self._q is not None:
            self._thread.join()


class Worker:
    """Run ``fn(item)`` for every item :meth:`put`, in order, in one thread fed by a queue
    of at most ``depth`` items (``threaded=False``: at once, in the caller's thread);
    ``yielding``: the thread yields to the network (:func:`yield_to_network`)."""

    def __init__(self, fn: Callable, depth: int = 2, threaded: bool = True, yielding: bool = False):
        self.fn, self.yielding = fn, yielding
        self.error: BaseException | None = None
        self._q: queue.Queue | None = None
        if threaded:
            self._q = queue.Queue(maxsize=max(1, depth))
            self._thread = threading.Thread(target=self._run, name="panoptem-decode", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        if self.yielding:
            yield_to_network()
        while True:
            item = self._q.get()
            if item is _END:
                return
            if self.error is not None:
                continue  # drain: the caller learns of the error at its next put
            try:
                self.fn(item)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                self.error = e

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def put(self, item) -> None:
        """Queue ``item`` (blocks while the queue is full); raises the worker's error."""
        self._raise()
        if self._q is None:
            self.fn(item)
            return
        self._q.put(item)
        self._raise()

    def finish(self) -> None:
        """Wait until every item is done; raises the worker's error."""
        if self._q is not None:
            self._q.put(_END)
            self._thread.join()
        self._raise()
