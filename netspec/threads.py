"""netspec's worker threads: how many, and `parallel_for` to share one layer's work among them.

How many: set_threads(n) (also `--threads` on the CLI), else NETSPEC_THREADS, else the cores
this process may run on (os.sched_getaffinity). netspec does its own splitting, so the BLAS
is held to one thread (threadpoolctl) whatever the count: a multi-threaded BLAS spins and
meets its threads at every GEMM, and on a busy machine one descheduled thread stalls all
the others (OpenBLAS's 2-thread LeNet step went from 9 to 70-150 ms beside one busy process).

How: a layer cuts its work into chunks and calls parallel_for(n, fn); the caller and the
workers take chunk indices from one counter until none are left, so a thread that is
descheduled holds up at most the chunk it is in. Between calls the workers spin briefly
without the GIL (spin_microseconds), then sleep on a lock. Chunk i's work must not depend
on which thread runs it or on the thread count: layers cut by the problem's shape alone,
and sum partial results in chunk order, so that 1, 2 or 3 threads give the same bytes. The
chunk functions spend their time in numpy or the compiled kernels, which release the GIL.

A call from inside a chunk, or from another thread while the pool is busy (a data
prefetch thread), runs its chunks in the calling thread, in order.
"""
import itertools
import os
import threading
import time

import numpy as np

from .errors import NetspecError

ENV = "NETSPEC_THREADS"

_count = None       # resolved on first use: set_threads, else ENV, else the affinity mask
_pool = None
_pool_lock = threading.Lock()


def available_cores():
    """The cores this process may run on (its affinity mask; os.cpu_count where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parse_count(value, source):
    """A thread count from text (`source` names where it came from, for the error)."""
    try:
        n = int(str(value).strip())
    except ValueError:
        n = 0
    if n < 1:
        raise NetspecError(f"{source}={value!r}: the thread count must be a whole number of at least 1")
    return n


def default_threads():
    """NETSPEC_THREADS when set, else the cores of the affinity mask."""
    value = os.environ.get(ENV, "").strip()
    return parse_count(value, ENV) if value else available_cores()


def get_threads():
    """The number of threads netspec computes with."""
    if _count is None:
        set_threads(default_threads())
    return _count


def set_threads(n):
    """Compute with `n` threads (1: everything in the calling thread). Holds the BLAS to one thread."""
    global _count, _pool
    n = parse_count(n, "threads")
    with _pool_lock:
        if _count is None:
            _limit_blas()
        _count = n
        if _pool is not None and _pool.workers != n - 1:
            _pool.close()
            _pool = None


_blas_limiter = None    # kept alive: the limit is threadpoolctl's while this object exists


def _limit_blas():
    """One BLAS thread; without threadpoolctl the BLAS keeps its own setting (OPENBLAS_NUM_THREADS)."""
    global _blas_limiter
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    _blas_limiter = threadpool_limits(limits=1, user_api="blas")


class _Task:
    """One parallel_for call: the chunks not yet taken, how many have finished, the first error.
    The last chunk to finish writes the call's number (`generation`) into `done_word`."""

    __slots__ = ("fn", "n", "next_index", "next_finished", "finished", "error", "done_word", "generation")

    def __init__(self, fn, n, done_word, generation):
        self.fn, self.n = fn, n
        self.done_word, self.generation = done_word, generation
        self.next_index = itertools.count().__next__        # atomic under the GIL
        self.next_finished = itertools.count(1).__next__
        # Held until the last chunk is done: a bare lock, whose release and acquire are one C call
        # each (an Event's wait and set go through a Condition in Python: twice the hand-off).
        self.finished = threading.Lock()
        self.finished.acquire()
        self.error = None

    def work(self):
        while True:
            i = self.next_index()
            if i >= self.n:
                return
            if self.error is None:      # after a failure the remaining chunks are skipped
                try:
                    self.fn(i)
                except BaseException as e:     # re-raised by the caller
                    if self.error is None:
                        self.error = e
            if self.next_finished() == self.n:
                self.done_word[0] = self.generation     # for a caller spinning on it
                self.finished.release()


def _compiled_spin_wait():
    """_native.spin_wait, or None without the compiled kernels (then every wait sleeps on a lock)."""
    try:
        from . import _native
    except ImportError:
        return None
    return getattr(_native, "spin_wait", None)


_spin_wait = _compiled_spin_wait()
# How long a worker that has finished, and a caller waiting for the workers' last chunks, spin
# (without the GIL) before they sleep on a lock. On the 2-core VM a thread asleep in the kernel
# took 20-80 us to wake, once per side of every parallel_for; with 200 us of spinning the batch-1
# forwards at 2 threads ran 0.90x (GoogLeNet), 0.92x (SqueezeNet) and LeNet's 0.95x the time.
# Longer (1-3 ms) gained nothing more. NETSPEC_SPIN_US sets it; 0 turns spinning off.
SPIN_ENV = "NETSPEC_SPIN_US"
DEFAULT_SPIN_US = 200.0


def spin_microseconds():
    """NETSPEC_SPIN_US when set (microseconds, 0 or more), else DEFAULT_SPIN_US."""
    value = os.environ.get(SPIN_ENV, "").strip()
    if not value:
        return DEFAULT_SPIN_US
    try:
        us = float(value)
    except ValueError:
        us = -1.0
    if not 0 <= us < float("inf"):
        raise NetspecError(f"{SPIN_ENV}={value!r}: the spin time must be a number of microseconds, 0 or more")
    return us


def _word():
    """One int32 the spinning threads read without the GIL."""
    return np.zeros(1, np.int32)


class _Pool:
    """`workers` threads beside the caller, each asleep on its own lock until there is work.

    The caller waits for the chunks, not for the workers: a worker it woke that has not run
    yet (descheduled on a busy machine) finds the task done when it does, and goes back to
    sleep. A late wake-up may so carry over into the next call, where it only helps.

    A worker sleeps in `wake[k].acquire()` on a lock it holds otherwise; the caller wakes it by
    releasing that lock (a bare lock, not a Semaphore: a Semaphore's Python-level Condition
    doubled the round trip, 17 against 7 us at best on the 2-core machine)."""

    def __init__(self, workers):
        self.workers = workers
        self.busy = threading.Lock()
        # Each call's number: posted before the call wakes the workers, and written to `done` by
        # whoever finishes its last chunk. Workers spin on `posted`, the caller on `done`.
        self.generation = 0
        self.posted, self.done = _word(), _word()
        self.spin_us = spin_microseconds() if _spin_wait is not None else 0.0
        self.wake = [threading.Lock() for _ in range(workers)]
        for lock in self.wake:
            lock.acquire()
        self.task = None
        self.closing = False
        self.threads = [threading.Thread(target=self._serve, args=(k,), name=f"netspec-worker-{k}", daemon=True)
                        for k in range(workers)]
        for t in self.threads:
            t.start()

    def _serve(self, k):
        _local.in_worker = True
        wake = self.wake[k]
        seen = 0
        while True:
            if self.spin_us:
                _spin_wait(self.posted, seen, self.spin_us, False)
            wake.acquire()
            seen = int(self.posted[0])
            if self.closing:
                return
            task = self.task
            if task is not None:
                task.work()

    def _wake(self, k):
        try:
            self.wake[k].release()
        except RuntimeError:
            pass        # released before and not taken yet: the worker is on its way already

    def run(self, n, fn):
        self.generation = self.generation % 0x7FFFFFFF + 1
        task = _Task(fn, n, self.done, self.generation)
        self.task = task
        self.posted[0] = self.generation
        for k in range(min(self.workers, n - 1)):
            self._wake(k)
        task.work()
        if self.spin_us:
            _spin_wait(self.done, self.generation, self.spin_us, True)
        task.finished.acquire()
        self.task = None
        if task.error is not None:
            raise task.error

    def close(self):
        with self.busy:
            self.closing = True
            for k in range(self.workers):
                self._wake(k)
        for t in self.threads:
            t.join()


_local = threading.local()


def parallel_for(n, fn):
    """fn(0), ..., fn(n - 1), shared among the threads; returns when all have returned.

    The chunks may run in any order and at once, so each must write only its own part of
    the output. The first exception a chunk raises is raised here (later chunks are skipped).
    """
    global _pool
    if n <= 0:
        return
    threads = get_threads() if _count is None else _count
    if n == 1 or threads == 1 or getattr(_local, "in_worker", False):
        if trace is not None and not getattr(_local, "in_worker", False):
            return _traced(n, fn)
        for i in range(n):
            fn(i)
        return
    pool = _pool
    if pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = _Pool(_count - 1)
            pool = _pool
    if not pool.busy.acquire(blocking=False):
        for i in range(n):      # nested call, or another thread's: in this thread, in order
            fn(i)
        return
    try:
        pool.run(n, fn)
    finally:
        pool.busy.release()


# Set to a list to record, at one thread, each parallel_for call's chunk times (seconds) into it:
# benchmarks/bench_threads.py --predict schedules them on more threads from that.
trace = None


def _traced(n, fn):
    clock = time.perf_counter
    times = []
    for i in range(n):
        t = clock()
        fn(i)
        times.append(clock() - t)
    trace.append((getattr(fn, "__qualname__", "?"), times))


def spans(total, parts):
    """[(start, stop)]: range(total) cut into `parts` runs (or fewer, none empty) whose lengths
    differ by at most one. Callers pick `parts` from the problem's shape, never the thread count."""
    parts = max(1, min(parts, total))
    step, extra = divmod(total, parts)
    out, start = [], 0
    for k in range(parts):
        stop = start + step + (1 if k < extra else 0)
        out.append((start, stop))
        start = stop
    return out


def even_count(most):
    """The largest power of two not above `most` (1 below that): a count of equal chunks that two or
    four threads share evenly (3 chunks on 2 threads: one thread runs 2, the other waits)."""
    return 1 << (max(1, int(most)).bit_length() - 1)


def _forget_pool_in_child():
    # A forked child has the pool's objects but not its threads.
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


# Elements per chunk of an elementwise pass: below about this, a chunk costs more to hand out than to run.
FLAT_CHUNK = 1 << 16
FLAT_CHUNKS = 8


def parallel_flat(fn, *arrays):
    """fn(*pieces) over matching runs of the C-contiguous `arrays` (all of one size, seen flat),
    in parallel: for elementwise work, where each output element depends on its inputs alone."""
    size = arrays[0].size
    blocks = spans(size, min(FLAT_CHUNKS, size // FLAT_CHUNK))
    if len(blocks) == 1 or not all(a.flags.c_contiguous and a.size == size for a in arrays):
        fn(*arrays)
        return
    flats = [a.reshape(-1) for a in arrays]
    parallel_for(len(blocks), lambda k: fn(*(f[blocks[k][0]:blocks[k][1]] for f in flats)))
