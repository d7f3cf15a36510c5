"""Data-parallel training over MPI: `mpirun -n N netspec train --solver=...`, as Caffe's multi-GPU training.

Every rank runs the train net at the file's batch_size on its own share of the
records (the Data layer gives rank r of N the records r, r+N, r+2N, ...), so one
iteration covers N x batch_size records. Gradients are summed over the ranks with
one Allreduce per bucket (a few large contiguous buffers, allocated once) and
scaled by 1/N; every rank then applies the same update to the same weights, so
the weights stay identical without being sent again. Rank 0 alone logs, tests
and snapshots; its .solverstate carries every rank's data cursor, so a resume
under MPI is exact.

mpi4py is imported only when an MPI launcher started this process as one of
several ranks: a plain `netspec train` never touches MPI. DataParallel is one
solver callback (callbacks.py); from Python, as the CLI does:

    dp = parallel.from_environment()         # None outside mpirun
    solver = Solver(path, rank=dp.rank); solver.add_callback(dp); solver.solve()
"""
import hashlib
import logging
import os
import sys
import time
import traceback

import numpy as np

from . import glog, rng
from .callbacks import SolverCallback
from .errors import NetspecError, install_hint
from .snapshot import check_resume_record, read_solverstate

# (size, rank) variables the launchers set: Open MPI, MPICH and Intel MPI (Hydra's PMI), MVAPICH.
_LAUNCHER_VARS = (("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"), ("PMI_SIZE", "PMI_RANK"),
                  ("MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK"))
BUCKET_VALUES = 1 << 22     # values per Allreduce (16 MiB of float32): few calls, bounded extra memory
_EXTRA = 3                  # slots after the last bucket's gradients: loss, stop request, snapshot request

_active = None              # this process's DataParallel, for abort_job


def launched_world(environ=None):
    """(rank, size, variable) as an MPI launcher announced them in the environment, or None."""
    environ = os.environ if environ is None else environ
    for size_var, rank_var in _LAUNCHER_VARS:
        try:
            return int(environ.get(rank_var, "0")), int(environ[size_var]), size_var
        except (KeyError, ValueError):
            continue
    return None


def from_environment(environ=None):
    """A DataParallel when an MPI launcher started this process as one of several ranks, else None.

    `mpirun -n 1` counts as one process: no MPI, no mpi4py.
    """
    world = launched_world(environ)
    if world is None or world[1] < 2:
        return None
    _, size, var = world
    return DataParallel(_import_mpi(f"{var}={size}"))


def _import_mpi(why):
    try:
        import mpi4py
        mpi4py.rc.thread_level = "funneled"     # only the main thread calls MPI, never the prefetch threads
        from mpi4py import MPI
    except ImportError:
        raise NetspecError(f"started by an MPI launcher ({why}), but mpi4py is not installed: "
                           f"{install_hint('mpi', 'mpi4py')}; it runs over the system's MPI, e.g. "
                           "apt-get install openmpi-bin libopenmpi-dev") from None
    except (RuntimeError, OSError) as e:
        raise NetspecError(f"started by an MPI launcher ({why}), but mpi4py cannot load the MPI library "
                           f"({e}); install the system's MPI, e.g. apt-get install openmpi-bin libopenmpi-dev"
                           ) from None
    return MPI


class _Bucket:
    """Consecutive parameters sharing one contiguous buffer: one Allreduce or Bcast moves them all."""

    def __init__(self, indices, blobs, extra):
        self.indices, self.blobs = indices, blobs
        dtype = blobs[0].diff.dtype if blobs else np.float32
        self.buffer = np.zeros(sum(b.count for b in blobs) + extra, dtype)
        self.views, offset = [], 0          # each parameter's slice of the buffer, in its shape
        for b in blobs:
            self.views.append(self.buffer[offset:offset + b.count].reshape(b.diff.shape))
            offset += b.count


def make_buckets(blobs, limit=None):
    """Group parameters in order into buckets of at most `limit` values (a larger one gets its own)."""
    limit = BUCKET_VALUES if limit is None else limit
    groups, current, size = [], [], 0
    for i, b in enumerate(blobs):
        if current and size + b.count > limit:
            groups.append(current)
            current, size = [], 0
        current.append(i)
        size += b.count
    groups.append(current)
    return [_Bucket(g, [blobs[i] for i in g], _EXTRA if k == len(groups) - 1 else 0)
            for k, g in enumerate(groups)]


class DataParallel(SolverCallback):
    """One rank's side of a data-parallel run: add it to a Solver built with `rank=dp.rank`.

    The Solver does what depends on the rank alone (seed random_seed + rank; only
    rank 0 tests, restores and writes); this callback moves what the ranks share.
    """

    def __init__(self, MPI, comm=None):
        global _active
        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self._buckets = None
        self._poll_signals = None
        self._agreed = "none"
        _active = self
        if self.rank:
            glog.configure(level=logging.WARNING)     # the other ranks stay quiet but for warnings

    # ------------------------------------------------------------ solver callback
    def on_solve(self, solver, resume_file):
        self.start(solver, resume_file)

    def on_gradients_ready(self, solver, loss):
        return self.reduce_gradients(loss)

    def on_loss(self, solver, loss):
        return self.average(loss)

    def on_snapshot(self, solver, resume):
        return self.gather_resume(resume)

    def agreed_action(self):
        return self._agreed_action()

    # ------------------------------------------------------------ setup
    def start(self, solver, resume_file=None):
        """Before the first iteration, once rank 0 restored `resume_file`: every rank takes rank 0's
        weights, solver state and data position, and its own data cursor from the snapshot when there is one."""
        self.check_agreement(run_sections(solver))     # before any buffer is sized from this rank's net
        # Signals reach ranks unevenly: each rank's request rides in the gradient Allreduce,
        # and every rank acts on the combined one at the same iteration.
        self._poll_signals = solver.action_request
        self._learnable = [blob for blob, _, _ in solver.net.learnable_params]
        self._buckets = make_buckets(self._learnable)
        self._tail = self._buckets[-1].buffer[-_EXTRA:]
        states = None
        if self.rank == 0:
            glog.info(f"Data-parallel training on {self.size} MPI ranks: effective batch = "
                      f"{self.size} x the net's batch_size", "parallel.py:0")
            if resume_file:
                states = self._rank_states(resume_file)
        head = (solver.training_position(), states is not None)
        position, exact = self.comm.bcast(head if self.rank == 0 else None, root=0)
        solver.move_to(position)
        mine = self.comm.scatter(states, root=0) if exact else None
        if mine is not None:
            rng.set_state(mine["rng"])
        self._start_data_layers(solver.net, mine)
        for arrays in solver.state_arrays():          # weights, then each history slot
            self._broadcast(arrays.__getitem__)

    def check_agreement(self, sections):
        """Every rank must run what rank 0 runs: rank 0 broadcasts a digest of each section (solver,
        net, parameter shapes); on any difference the job ends with one line naming the first
        differing rank and line. Ranks with other nets would otherwise corrupt the Allreduce
        buffers or hang, and other solver settings drift apart in silence."""
        mine = {name: hashlib.sha256(text.encode("utf-8")).hexdigest() for name, text in sections.items()}
        reference = self.comm.bcast(mine if self.rank == 0 else None, root=0)
        differ = [name for name in sections if mine.get(name) != reference.get(name)]
        everyone = self.comm.gather(differ, root=0)
        bad = self.comm.bcast(sorted({n for d in everyone for n in d}) if self.rank == 0 else None, root=0)
        if not bad:
            return
        texts = self.comm.bcast({n: sections[n] for n in bad} if self.rank == 0 else None, root=0)
        note = None
        for name in differ:
            note = f"rank {self.rank}'s {name} differs from rank 0's: {first_difference(sections[name], texts[name])}"
            break
        notes = self.comm.gather(note, root=0)
        if self.rank == 0:
            raise NetspecError("the MPI ranks do not run the same training: "
                               + next(n for n in notes if n is not None))
        self.comm.Barrier()           # rank 0 ends the job (abort_job), this rank waits for it

    def _rank_states(self, resume_file):
        """Each rank's random state and data cursors from rank 0's snapshot, or None if it cannot be exact."""
        _, resume = read_solverstate(resume_file)
        try:
            check_resume_record(resume or {"rng": rng.get_state()})
        except ValueError:
            return None               # solver.restore has said the record is damaged
        states = (resume or {}).get("mpi_ranks")
        if states is not None and len(states) != self.size:
            glog.warning(f"{resume_file} was written by {len(states)} ranks and this run has {self.size}: the "
                         "ranks go on from rank 0's record position, with fresh transform draws (not an exact resume)",
                         "parallel.py:0")
            return None
        return states

    def _start_data_layers(self, net, mine):
        strided = [(name, layer) for name, layer in net.layer_dict.items() if hasattr(layer, "set_stride")]
        if self.rank == 0:
            for name, layer in net.layer_dict.items():
                if layer.is_data and not hasattr(layer, "set_stride") and layer.type != "Input":
                    glog.warning(f"layer '{name}' ({layer.type}) does not share its data out between ranks: "
                                 "every rank reads the same items", "parallel.py:0")
        # Rank 0's position is where the next iteration's N x batch_size records begin.
        positions = [layer.get_resume_state()["position"] for _, layer in strided]
        shared = self.comm.bcast(positions if self.rank == 0 else None, root=0)
        for (name, layer), position in zip(strided, shared):
            saved = mine["layers"].get(f"train/{name}") if mine is not None else None
            if saved is None:
                saved = {"position": (position + self.rank) % len(layer.cursor),
                         "rng": layer.get_resume_state()["rng"]}
            layer.set_stride(self.size, saved)

    # ------------------------------------------------------------ every iteration
    def reduce_gradients(self, loss):
        """Average every parameter's gradient, and the loss, over the ranks; return the mean loss."""
        request = self._poll_signals() if self._poll_signals is not None else "none"
        tail = self._tail
        tail[0], tail[1], tail[2] = loss, request in ("stop", "snapshot_stop"), request in ("snapshot", "snapshot_stop")
        scale = 1.0 / self.size
        in_place, total = self.MPI.IN_PLACE, self.MPI.SUM
        for bucket in self._buckets:
            for view, blob in zip(bucket.views, bucket.blobs):
                np.copyto(view, blob.diff)
            self.comm.Allreduce(in_place, bucket.buffer, op=total)
            for view, blob in zip(bucket.views, bucket.blobs):
                np.multiply(view, scale, out=blob.diff)
        self._agreed = {(1, 1): "snapshot_stop", (1, 0): "stop", (0, 1): "snapshot"}.get((bool(tail[1]), bool(tail[2])),
                                                                                       "none")
        return float(tail[0]) * scale

    def average(self, value):
        """The mean of a number over the ranks (once-off values; the loop's loss rides with the gradients)."""
        return self.comm.allreduce(float(value)) / self.size

    def _agreed_action(self):
        action, self._agreed = self._agreed, "none"
        return action

    # ------------------------------------------------------------ snapshots
    def gather_resume(self, payload):
        """Every rank's random state and train-net data cursors, gathered into rank 0's resume payload
        (None on the other ranks, which write nothing)."""
        mine = {"rng": payload["rng"],
                "layers": {k: v for k, v in payload["layers"].items() if k.startswith("train/")}}
        everyone = self.comm.gather(mine, root=0)
        if self.rank:
            return None
        return dict(payload, mpi_ranks=everyone)

    def _broadcast(self, array_of):
        """Rank 0's arrays to every rank, a bucket per Bcast; array_of(i) is parameter i's array."""
        for bucket in self._buckets:
            if self.rank == 0:
                for view, i in zip(bucket.views, bucket.indices):
                    np.copyto(view, array_of(i))
            self.comm.Bcast(bucket.buffer, root=0)
            if self.rank:
                for view, i in zip(bucket.views, bucket.indices):
                    np.copyto(array_of(i), view)


# Only rank 0 tests: its test settings are its own. Everything else must be the same on every rank.
_ROOT_ONLY_FIELDS = ("test_iter", "test_net", "test_net_param", "test_state", "test_interval")


def run_sections(solver):
    """{section: text} of what defines a training: the solver (less rank 0's test settings), the train
    net, and every learnable parameter's shape in order."""
    from google.protobuf import text_format
    param = type(solver.param)()
    param.CopyFrom(solver.param)
    for field in _ROOT_ONLY_FIELDS:
        param.ClearField(field)
    shapes = [f"{name} param {j}: {tuple(blob.shape)}" for name, layer in solver.net.layer_dict.items()
              for j, blob in enumerate(layer.blobs)]
    return {"solver": text_format.MessageToString(param), "net": text_format.MessageToString(solver.net.param),
            "parameter shapes": "\n".join(shapes)}


def first_difference(text, reference):
    """`line N: 'this' where rank 0 has 'that'` for the first line where two texts differ."""
    ours, theirs = text.splitlines(), reference.splitlines()
    for i in range(max(len(ours), len(theirs))):
        a = ours[i].strip() if i < len(ours) else "<end>"
        b = theirs[i].strip() if i < len(theirs) else "<end>"
        if a != b:
            return f"line {i + 1}: '{a}' where rank 0 has '{b}'"
    return "same lines, other bytes"


def _describe(exc):
    if hasattr(exc, "format_message"):                      # click's errors, netspec's UserError among them
        return exc.format_message()
    if isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "Abort":
        return "interrupted"
    return f"{type(exc).__name__}: {exc}"


def abort_job(exc, verbose=False):
    """Under MPI: print `netspec: error: rank R: ...` and end every rank of the job (MPI_Abort).

    Otherwise the other ranks would wait for this one in their next Allreduce
    for ever. Returns at once in a process that is not an MPI rank.
    """
    dp = _active
    if dp is None or (isinstance(exc, SystemExit) and not exc.code):
        return
    expected = isinstance(exc, KeyboardInterrupt) or hasattr(exc, "format_message")
    if verbose or not expected:
        traceback.print_exception(exc)
    sys.stderr.write(f"netspec: error: rank {dp.rank}: {_describe(exc)}\n")
    sys.stderr.flush()
    if dp.rank:
        # An error every rank meets (a bad file) aborts once, from rank 0: Open MPI 4 garbles
        # its report when several ranks abort at the same moment.
        time.sleep(0.5)
    dp.comm.Abort(1)
    # MPICH 5's MPI_Abort returns to its caller once it has told the launcher: end here, or the
    # error would be printed a second time on the way out.
    os._exit(1)
