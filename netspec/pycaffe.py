"""pycaffe's module-level functions that are not about nets: logging, timing, multi-solver state.

    caffe.init_log(1)                 # glog's minimum level: 0 INFO, 1 WARNING, 2 ERROR, 3 FATAL
    caffe.log('starting')             # one INFO line in glog's format
    t = caffe.Timer(); t.start(); ...; t.stop(); t.ms
    caffe.solver_count(), caffe.solver_rank()   # the MPI job's size and this rank, else 1 and 0

There is no NCCL (no GPUs): has_nccl() is False, as in a CPU build of Caffe, and
several processes train together through MPI instead (`mpirun ... netspec train`).
"""
import time

from . import glog
from .errors import NetspecError


def init_log(level=None, stderr=None):
    """pycaffe's init_log([level[, stderr]]): set the minimum level logged (GLOG_minloglevel's scale).

    pycaffe then sends glog's lines to files in /tmp unless `stderr`; netspec keeps
    them on stderr either way (glog files come from `netspec train --log_dir`).
    """
    glog.configure(level=glog.level_from_glog(level) if level is not None else glog.default_level())


def log(message):
    """One INFO line, as glog's LOG(INFO) << message."""
    glog.ensure_configured()
    glog.info(str(message), "_caffe.cpp:68")


class Timer:
    """Caffe's Timer: start(), stop(), and `ms`, the milliseconds between them (or up to now)."""

    def __init__(self):
        self._start = self._stop = None

    def start(self):
        self._start, self._stop = time.perf_counter(), None

    def stop(self):
        if self._start is not None and self._stop is None:
            self._stop = time.perf_counter()

    @property
    def ms(self):
        if self._start is None:
            return 0.0
        end = self._stop if self._stop is not None else time.perf_counter()
        return (end - self._start) * 1e3

    @property
    def seconds(self):
        return self.ms / 1e3


def has_nccl():
    return False


class NCCL:
    """Present so that `caffe.NCCL` resolves; NCCL needs GPUs, which netspec does not use."""

    def __init__(self, *args, **kwargs):
        raise NetspecError("NCCL needs GPUs, which netspec does not use; train on several processes "
                           "with `mpirun -n N netspec train --solver=...` instead")

    @staticmethod
    def new_uid():
        raise NetspecError("NCCL needs GPUs, which netspec does not use (has_nccl() is False)")


# Caffe's process-wide solver_count/solver_rank/multiprocess. Unset, they report the MPI job this
# process belongs to (what netspec's data-parallel training uses); set, they report what was set.
_solver_state = {"count": None, "rank": None, "multiprocess": False}


def _mpi_world():
    from . import parallel
    if parallel._active is not None:
        return parallel._active.rank, parallel._active.size
    world = parallel.launched_world()
    return (world[0], world[1]) if world is not None else (0, 1)


def solver_count():
    count = _solver_state["count"]
    return count if count is not None else _mpi_world()[1]


def solver_rank():
    rank = _solver_state["rank"]
    return rank if rank is not None else _mpi_world()[0]


def set_solver_count(count):
    count = int(count)
    if count < 1:
        raise NetspecError(f"set_solver_count({count}): the count must be at least 1")
    _solver_state["count"] = count


def set_solver_rank(rank):
    rank = int(rank)
    if rank < 0:
        raise NetspecError(f"set_solver_rank({rank}): the rank must not be negative")
    _solver_state["rank"] = rank


def set_multiprocess(multiprocess):
    _solver_state["multiprocess"] = bool(multiprocess)


def multiprocess():
    return _solver_state["multiprocess"]


def root_solver():
    """Caffe::root_solver(): rank 0 logs, tests and snapshots."""
    return solver_rank() == 0


__all__ = ["init_log", "log", "Timer", "has_nccl", "NCCL", "solver_count", "solver_rank",
           "set_solver_count", "set_solver_rank", "set_multiprocess"]
