"""Overlap the stages of a stack: reading ahead in one thread, decoding and linking
behind the network in another, each fed through a bounded queue. The order of the
work never changes, so the results are those of the sequential run (tested).

When the network runs on the CPU and what they do costs far less than the network, the threads
behind it run at a lower scheduling priority (:class:`BehindNetwork`, :func:`yield_to_network`):
they then take the cycles the network's threads leave idle instead of stalling them."""
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
#: the threads behind a CPU network yield to it only when their CPU seconds per batch are below
#: this share of the network's seconds per batch. Where they cost more (an int8 network beside
#: work on a finer label grid), the run waits for them, and at a lower priority it waits longer:
#: whole Lucchi volume told 5 nm, int8, xy stack 2.29-2.35 s at normal priority against
#: 2.56-2.58 s yielding (their share 0.8); in fp32 (share 0.2) yielding is worth a few per cent
#: (5.12 against 5.25 s)
YIELD_BELOW = 0.5
#: network batches (and at least one batch read and decoded) before the threads are weighed
YIELD_AFTER = 2


def yield_to_network(tid: int | None = None) -> bool:
    """Lower the priority of thread ``tid`` (a native thread id; None: the calling thread) to
    :data:`BEHIND_NETWORK_NICE` (Linux, where niceness is per thread; elsewhere nothing). The
    network's intra-op threads split each operation evenly between the cores, so a decoding
    thread that takes a core from one of them stalls them all; at a lower priority it runs in
    the gaps the network leaves. Returns whether the priority was lowered. A thread cannot
    raise its priority again: call this only for threads made for the work behind the network."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        tid = threading.get_native_id() if tid is None else int(tid)
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


class _Busy:
    """A thread's native id (once it runs), and the CPU seconds and items of its work."""

    tid: int | None = None
    cpu_s: float = 0.0
    done: int = 0

    def _timed(self, fn: Callable, x):
        t = time.thread_time()
        try:
            return fn(x)
        finally:
            self.cpu_s += time.thread_time() - t
            self.done += 1


class Prefetch(_Busy):
    """Iterate over ``fn(x)`` for ``x`` in ``items``, computed up to ``depth`` items
    ahead in a thread (``threaded=False``: computed when asked)."""

    def __init__(self, fn: Callable, items: Iterable, depth: int = 1, threaded: bool = True):
        self.fn, self.items = fn, list(items)
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
        self.tid = threading.get_native_id()
        try:
            for x in self.items:
                if not self._put((True, self._timed(self.fn, x))):
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


class Worker(_Busy):
    """Run ``fn(item)`` for every item :meth:`put`, in order, in one thread fed by a queue
    of at most ``depth`` items (``threaded=False``: at once, in the caller's thread)."""

    def __init__(self, fn: Callable, depth: int = 2, threaded: bool = True):
        self.fn = fn
        self.error: BaseException | None = None
        self._q: queue.Queue | None = None
        if threaded:
            self._q = queue.Queue(maxsize=max(1, depth))
            self._thread = threading.Thread(target=self._run, name="panoptem-decode", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        self.tid = threading.get_native_id()
        while True:
            item = self._q.get()
            if item is _END:
                return
            if self.error is not None:
                continue  # drain: the caller learns of the error at its next put
            try:
                self._timed(self.fn, item)
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


class BehindNetwork:
    """Weighs, once, the threads behind a network on the CPU (a :class:`Prefetch` and a
    :class:`Worker`) against it: told each batch's network seconds (:meth:`batch`), after
    :data:`YIELD_AFTER` batches it lowers their priority (:func:`yield_to_network`) when their
    CPU seconds per item add up to less than :data:`YIELD_BELOW` of the network's per batch;
    otherwise they stay at normal priority, as what the run waits for. :attr:`yielded` says
    which (None until weighed)."""

    def __init__(self, *threads: _Busy):
        self.threads = list(threads)
        self.net_s, self.batches = 0.0, 0
        self.yielded: bool | None = None

    def batch(self, seconds: float) -> None:
        self.net_s += seconds
        self.batches += 1
        if self.yielded is not None or self.batches < YIELD_AFTER:
            return
        if not all(t.done and t.tid is not None for t in self.threads):
            return  # not yet measured (or not threaded): weigh at a later batch
        behind = sum(t.cpu_s / t.done for t in self.threads)
        self.yielded = behind < YIELD_BELOW * self.net_s / self.batches
        if self.yielded:
            for t in self.threads:
                yield_to_network(t.tid)
