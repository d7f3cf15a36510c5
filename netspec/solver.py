"""Solver: Caffe's training loop (Solver::Step, Solve, Test, Snapshot, Restore).

The update rule is a small object from updates.py chosen by `type`; this
module owns the rest: building the train and test nets, regularisation,
gradient clipping, lr policies, the display and test log lines Caffe writes,
and snapshots with everything needed to resume exactly.
"""
import functools
import os
import time

import numpy as np

from . import glog, hdf5, rng
from .callbacks import FunctionCallback, SolverCallback
from .durable import temp_name_for
from .errors import NetspecError
from .layers import native
from .layers.python import UserCodeExit
from .lr_policy import advance_multistep, check_policy, learning_rate
from .net import Net
from .proto import caffe_pb2
from .schema import read_net, read_solver
from .threads import parallel_flat
from .snapshot import (check_resume_record, lock_prefix, read_solverstate, release_prefix, resolve_learned_net,
                       snapshot_paths, write_solverstate)
from .updates import SGD, make_rule
from .weights import array_to_blob, blob_to_array


# What a non-finite loss does, for every solver in the process (`netspec train --on_divergence`):
# "stop" writes a snapshot marked .diverged and raises; "continue" logs it and trains on, as Caffe.
DIVERGENCE_MODES = ("stop", "continue")
_on_divergence = ["stop"]


def set_on_divergence(mode):
    """Set what solvers made from now on do at a NaN/inf loss: 'stop' (the default) or 'continue'."""
    if mode not in DIVERGENCE_MODES:
        raise NetspecError(f"on_divergence must be one of {', '.join(DIVERGENCE_MODES)}, got {mode!r}")
    _on_divergence[0] = mode


DIVERGED_SUFFIX = ".diverged"     # after the extension, so no *.caffemodel / *.solverstate glob picks it up


def _fmt(x):
    # C++ ostream's default float format (6 significant digits), which Caffe's log parsers expect.
    return f"{float(x):g}"


class Solver:
    """pycaffe's caffe.Solver family: `SGDSolver(path)` etc., or `get_solver(path)`.

    `rank` is Caffe's solver rank in data-parallel training: each rank seeds with
    random_seed + rank, and only rank 0 (the root) builds test nets, restores a
    snapshot and writes snapshots. The Solver is the one writer of `self.param`.
    """

    def __init__(self, solver_file, param=None, rank=0):
        self.source = solver_file if isinstance(solver_file, (str, os.PathLike)) else "<SolverParameter>"
        self.param = param if param is not None else read_solver(solver_file)
        self.rank = rank
        if getattr(type(self), "_type", None):
            self.param.type = self._type      # pycaffe's SGDSolver(path) is SGD whatever the file says
        self._validate()
        p = self.param
        if p.random_seed >= 0:
            rng.set_seed(p.random_seed + rank)   # as Caffe: dropout and transforms draw differently per rank
        self.rule = make_rule(p, self.source)
        self.iter = 0
        self.current_step = 0
        self.action_request = None        # callable -> "none" | "stop" | "snapshot" | "snapshot_stop" (signals)
        self._prefix_lock = None          # snapshot.lock_prefix's lock while this solver trains
        self._snapshot_iter = None        # the iteration of the last snapshot written
        self.snapshot_on_user_exit = False  # the CLI: whether --sigint_effect keeps work (stop, snapshot)
        self.callbacks = []               # SolverCallback objects, called in the order added (callbacks.py)
        self.requested_early_exit = False
        self.on_divergence = _on_divergence[0]
        self._losses, self._smoothed_loss, self._loss_start = [], 0.0, 0
        self._resumed_losses = None
        glog.info(f"Initializing solver from parameters: {self.source}", "solver.cpp:45")
        self.net, self.test_nets = None, []
        self.net = self._make_train_net()
        try:
            self.test_nets = self._make_test_nets() if rank == 0 else []
        except BaseException:
            self.close()                  # the train net's Data layer must not keep its thread
            raise
        self._histories = [[np.zeros_like(blob.data) for _ in range(self.rule.num_histories)]
                           for blob, _, _ in self.net.learnable_params]
        glog.info("Solver scaffolding done.", "solver.cpp:57")

    def close(self):
        """Release the nets' prefetch threads and LMDBs (Net.close), and the snapshot prefix's lock."""
        self._release_prefix()
        for net in [self.net] + list(self.test_nets):
            if net is not None:
                net.close()

    # ------------------------------------------------------------ setup
    def _validate(self):
        p, where = self.param, self.source
        if p.base_lr <= 0 or not np.isfinite(p.base_lr):
            raise NetspecError(f"{where}: base_lr must be positive, got {_fmt(p.base_lr)}")
        check_policy(p, where)
        if p.regularization_type not in ("L1", "L2"):
            raise NetspecError(f"{where}: unknown regularization_type '{p.regularization_type}' (L1 or L2)")
        if p.iter_size < 1:
            raise NetspecError(f"{where}: iter_size must be at least 1, got {p.iter_size}")
        bad_iters = [n for n in p.test_iter if n < 1]
        if bad_iters:
            raise NetspecError(f"{where}: test_iter must be at least 1, got {bad_iters[0]}")
        if p.average_loss < 1:
            raise NetspecError(f"{where}: average_loss must be at least 1, got {p.average_loss}")
        sources = [f for f in ("train_net_param", "train_net", "net_param", "net") if p.HasField(f)]
        if not sources:
            raise NetspecError(f"{where}: no train net: set one of net, net_param, train_net, train_net_param")
        if len(sources) > 1:
            raise NetspecError(f"{where}: more than one train net given ({', '.join(sources)}); set exactly one")
        if p.snapshot < 0:
            raise NetspecError(f"{where}: snapshot must not be negative, got {p.snapshot}")
        if p.snapshot or p.snapshot_after_train or p.snapshot_prefix:   # a signal may ask for one, too
            self._default_prefix()
            if self.rank == 0:            # the root alone writes; other ranks would race on one host
                self._check_snapshot_writable()
            if p.snapshot_format == caffe_pb2.SolverParameter.HDF5:
                hdf5.h5py_module()            # missing h5py: say so now, not at the first snapshot

    def _default_prefix(self):
        # Newer Caffe: no prefix -> the solver file's path without extension; a directory -> + its name.
        p = self.param
        stem = os.path.splitext(os.path.basename(self.source))[0] if self.source != "<SolverParameter>" else "netspec"
        if not p.snapshot_prefix:
            p.snapshot_prefix = os.path.splitext(self.source)[0] if self.source != "<SolverParameter>" else stem
        elif p.snapshot_prefix.endswith(os.sep) or os.path.isdir(p.snapshot_prefix):
            p.snapshot_prefix = os.path.join(p.snapshot_prefix, stem)

    def _check_snapshot_writable(self):
        prefix = self.param.snapshot_prefix
        probe = temp_name_for(f"{prefix}_iter_probe")      # netspec's temp pattern: removed if left by a kill
        try:
            folder = os.path.dirname(prefix)
            blocker = folder
            while blocker and not os.path.exists(blocker):
                blocker = os.path.dirname(blocker)
            if blocker and not os.path.isdir(blocker):
                raise NetspecError(f"{self.source}: cannot write snapshots to prefix '{prefix}': '{blocker}' is a "
                                   "file, not a directory")
            if folder and not os.path.isdir(folder):
                os.makedirs(folder)      # friendlier than Caffe, which fails on a missing folder
                glog.info(f"Created snapshot folder {folder}", "solver.cpp:60")
            with open(probe, "wb") as f:
                f.write(b"netspec")
            os.unlink(probe)
        except OSError as e:
            raise NetspecError(f"{self.source}: cannot write snapshots to prefix '{prefix}' ({e.strerror}); "
                               "make sure the directory exists and is writable") from None

    def _read_net_file(self, field, path):
        if not os.path.exists(path):
            raise NetspecError(f"{self.source}: {field} file '{path}' does not exist (paths in a solver are relative "
                               "to the working directory)")
        return read_net(path), path

    def _net_param(self, field_param, field_file):
        """(NetParameter, the name errors in it go by)."""
        p = self.param
        if p.HasField(field_param):
            return read_net(getattr(p, field_param)), f"{self.source} ({field_param})"
        return self._read_net_file(field_file, getattr(p, field_file))

    def _make_train_net(self):
        p = self.param
        if p.HasField("train_net_param") or p.HasField("train_net"):
            net_param, source = self._net_param("train_net_param", "train_net")
        else:
            net_param, source = self._net_param("net_param", "net")
        state = caffe_pb2.NetState()
        state.CopyFrom(net_param.state)
        state.MergeFrom(p.train_state)
        state.phase = caffe_pb2.TRAIN
        net_param.state.CopyFrom(state)
        glog.info("Creating training net.", "solver.cpp:91")
        return Net(net_param, caffe_pb2.TRAIN, source=source)

    def _make_test_nets(self):
        p, where = self.param, self.source
        specific = ([(read_net(n), f"{where} (test_net_param)") for n in p.test_net_param]
                    + [self._read_net_file("test_net", f) for f in p.test_net])
        generic = p.HasField("net") or p.HasField("net_param")
        if generic:
            if len(p.test_iter) < len(specific):
                raise NetspecError(f"{where}: test_iter must be given for each test net "
                                   f"({len(specific)} test nets, {len(p.test_iter)} test_iter)")
            base = self._net_param("net_param", "net")
            specific += [base] * (len(p.test_iter) - len(specific))
        elif len(p.test_iter) != len(specific):
            if p.test_iter and not specific:
                raise NetspecError(f"{where}: test_iter is set but there is no test net "
                                   "(give test_net, test_net_param, or a net with TEST-phase layers via net)")
            raise NetspecError(f"{where}: test_iter must be given for each test net "
                               f"({len(specific)} test nets, {len(p.test_iter)} test_iter)")
        if p.test_state and len(p.test_state) != len(specific):
            raise NetspecError(f"{where}: test_state must be given once per test net or not at all")
        if specific and p.test_interval <= 0:
            raise NetspecError(f"{where}: test nets are defined but test_interval is {p.test_interval}; "
                               "set a positive test_interval")
        nets = []
        for i, (net_param, source) in enumerate(specific):
            state = caffe_pb2.NetState()
            state.CopyFrom(net_param.state)
            if p.test_state:
                state.MergeFrom(p.test_state[i])
            state.phase = caffe_pb2.TEST
            param = caffe_pb2.NetParameter()
            param.CopyFrom(net_param)
            param.state.CopyFrom(state)
            glog.info(f"Creating test net (#{i}) specified by {where}", "solver.cpp:181")
            net = Net(param, caffe_pb2.TEST, source=source)
            net.share_with(self.net)
            nets.append(net)
        return nets

    # ------------------------------------------------------------ callbacks
    def add_callback(self, on_start, on_gradients_ready=None):
        """pycaffe's add_callback: `add_callback(on_start, on_gradients_ready)` with two functions of
        no arguments, called at the start of each iteration and when its gradients are ready; or
        `add_callback(callback)` with a SolverCallback (netspec.parallel.DataParallel is one)."""
        if on_gradients_ready is None and isinstance(on_start, SolverCallback):
            self.callbacks.append(on_start)
        else:
            self.callbacks.append(FunctionCallback(on_start, on_gradients_ready))

    def _requested_action(self):
        """"none", "stop", "snapshot" or "snapshot_stop": a callback's agreed action (MPI), else action_request's."""
        for callback in self.callbacks:
            agreed = callback.agreed_action()
            if agreed is not None:
                return agreed
        return self.action_request() if self.action_request else "none"

    def training_position(self):
        """Where training stands besides weights and histories: (iter, current_step, resumed loss window)."""
        return self.iter, self.current_step, self._resumed_losses

    def move_to(self, position):
        """Continue from another solver's training_position() (data parallelism: the root's)."""
        self.iter, self.current_step, self._resumed_losses = position

    def state_arrays(self):
        """[every param's data], then [every param's history k] for each k: what the ranks must agree on."""
        weights = [blob.data for blob, _, _ in self.net.learnable_params]
        return [weights] + [[history[k] for history in self._histories] for k in range(self.rule.num_histories)]

    # ------------------------------------------------------------ training
    @property
    def lr(self):
        """pycaffe's SGDSolver.lr: the learning rate at the current iteration."""
        return self.learning_rate()

    def learning_rate(self):
        self.current_step = advance_multistep(self.param, self.iter, self.current_step) \
            if self.param.lr_policy == "multistep" else self.current_step
        rate = learning_rate(self.param, self.iter, self.current_step)
        if not np.isfinite(rate):
            p = self.param
            raise NetspecError(f"{self.source}: lr_policy '{p.lr_policy}' gives a learning rate of {rate} at "
                               f"iteration {self.iter} (base_lr {_fmt(p.base_lr)}, gamma {_fmt(p.gamma)}, power "
                               f"{_fmt(p.power)}, stepsize {p.stepsize}); choose values that keep it finite")
        return rate

    def _update_smoothed_loss(self, loss):
        n = self.param.average_loss
        if len(self._losses) < n:
            self._losses.append(loss)
            k = len(self._losses)
            self._smoothed_loss = (self._smoothed_loss * (k - 1) + loss) / k
        else:
            idx = (self.iter - self._loss_start) % n
            self._smoothed_loss += (loss - self._losses[idx]) / n
            self._losses[idx] = loss

    def _hold_prefix(self):
        """One training per snapshot_prefix (the root alone writes under MPI); True if taken just now."""
        p = self.param
        if self._prefix_lock is None and p.snapshot_prefix and self.rank == 0:
            self._prefix_lock = lock_prefix(p.snapshot_prefix, self.source)
            return True
        return False

    def _release_prefix(self):
        if self._prefix_lock is not None:
            release_prefix(self._prefix_lock)
            self._prefix_lock = None

    def step(self, iters):
        """Caffe's Solver::Step; holds the snapshot prefix's lock while it runs (solve: the whole run)."""
        taken = self._hold_prefix()
        try:
            self._step(iters)
        finally:
            if taken:
                self._release_prefix()

    def _step(self, iters):
        p = self.param
        stop_iter = self.iter + iters
        if self._resumed_losses is not None:
            # Exact resume: continue the smoothed-loss window of the interrupted run.
            losses, self._smoothed_loss, self._loss_start = self._resumed_losses
            self._losses, self._resumed_losses = list(losses), None
        else:
            self._losses, self._smoothed_loss, self._loss_start = [], 0.0, self.iter
        tic, iters_last = time.perf_counter(), self.iter
        while self.iter < stop_iter:
            self.net.clear_param_diffs()
            if p.test_interval and self.iter % p.test_interval == 0 and (self.iter > 0 or p.test_initialization):
                self.test_all()
                if self.requested_early_exit:
                    break
            display = p.display and self.iter % p.display == 0
            for callback in self.callbacks:
                callback.on_start(self)
            self.net.debug_info = bool(display and p.debug_info)
            loss = 0.0
            try:
                for _ in range(p.iter_size):
                    loss += self.net.forward_backward()
            except NetspecError as e:
                # A Python layer called sys.exit(): an error, but the work so far is kept as a
                # SIGINT would keep it (the weights are those of the last finished iteration).
                user_exit = isinstance(e, UserCodeExit) or isinstance(e.__cause__, UserCodeExit)
                if user_exit and self.snapshot_on_user_exit and not self.callbacks:
                    self.snapshot()
                raise
            loss /= p.iter_size
            for callback in self.callbacks:   # MPI: gradients and the loss averaged over the ranks
                loss = callback.on_gradients_ready(self, loss)
            if not np.isfinite(loss):
                self._diverged(loss)
            self._update_smoothed_loss(loss)
            if display:
                lapse = time.perf_counter() - tic
                per_s = (self.iter - iters_last) / (lapse or 1.0)
                glog.info(f"Iteration {self.iter} ({_fmt(per_s)} iter/s, {_fmt(lapse)}s/{p.display} iters), "
                          f"loss = {_fmt(self._smoothed_loss)}", "solver.cpp:243")
                tic, iters_last = time.perf_counter(), self.iter
                self._log_outputs(self.net, "Train", "solver.cpp:259")
            self.apply_update()
            self.iter += 1
            if p.display:
                done = self.iter % p.display or p.display
                glog.progress(f"  iteration {self.iter}/{p.max_iter}: {done}/{p.display} of this display "
                              f"interval, loss {self._smoothed_loss:.4g}")
            request = self._requested_action()
            if (p.snapshot and self.iter % p.snapshot == 0) or request in ("snapshot", "snapshot_stop"):
                self.snapshot()
            if request in ("stop", "snapshot_stop"):
                self.requested_early_exit = True
                break

    def _log_outputs(self, net, kind, source, values=None):
        index = 0
        for name in net.outputs:
            data = values[name] if values is not None else net.blobs[name].data.reshape(-1)
            w = net.blob_loss_weights.get(name, 0.0)
            for v in np.ravel(data):
                extra = f" (* {_fmt(w)} = {_fmt(w * v)} loss)" if w else ""
                glog.info(f"    {kind} net output #{index}: {name} = {_fmt(v)}{extra}", source)
                index += 1

    def _divergence_message(self, loss):
        return (f"training diverged at iteration {self.iter}: loss is {loss}; {self.net.first_non_finite()} "
                "(lower base_lr, or set clip_gradients)")

    def _diverged(self, loss):
        """A non-finite loss: stop with a snapshot of the weights that gave it, or carry on as Caffe does."""
        if self.on_divergence == "continue":
            if not getattr(self, "_warned_divergence", False):
                glog.warning(f"Iteration {self.iter}: loss is {_fmt(loss)}; training goes on (on_divergence="
                             "continue), as in Caffe", "solver.cpp:232")
                self._warned_divergence = True
            return
        message = self._divergence_message(loss)
        try:
            if not self.param.snapshot_prefix:
                self._default_prefix()
            self._check_snapshot_writable()           # makes the folder, as a first snapshot would
            written = self.snapshot(suffix=DIVERGED_SUFFIX)
        except (NetspecError, OSError) as e:
            raise NetspecError(f"{message}; the diverged snapshot could not be written ({e})") from None
        if written:
            message += f"; the weights that diverged are in {written[0]} (and {written[1]})"
        raise NetspecError(message + "; --on_divergence=continue trains on as Caffe does")

    def apply_update(self):
        """Caffe's SGDSolver::ApplyUpdate: lr, clipping, normalise, regularise, rule, then step."""
        p = self.param
        rate = self.learning_rate()
        if p.display and self.iter % p.display == 0:
            glog.info(f"Iteration {self.iter}, lr = {_fmt(rate)}", "sgd_solver.cpp:138")
        self._clip_gradients()
        scale = 1.0 / p.iter_size
        l1 = p.regularization_type == "L1"
        for (blob, lr_mult, decay_mult), history in zip(self.net.learnable_params, self._histories):
            decay = p.weight_decay * decay_mult
            term = self._scratch(blob.diff) if decay else blob.diff     # decay * data, without a new array
            # Every step below is elementwise: the threads take runs of the parameter's elements.
            parallel_flat(functools.partial(self._update_run, rate * lr_mult, decay, scale, l1),
                          blob.diff, blob.data, term, *history)

    def _update_run(self, rate, decay, scale, l1, diff, data, term, *history):
        """apply_update's steps for one run of a parameter's elements (`term`: work space)."""
        if not l1 and type(self.rule) is SGD and native.has_sgd_step(diff.dtype):
            # Plain SGD with L2: the five numpy passes below as one compiled pass, same roundings.
            native.kernels.sgd_step(data, diff, history[0], scale, decay, rate, self.param.momentum)
            return
        if self.param.iter_size > 1:
            diff *= scale
        if decay:
            if l1:
                np.sign(data, out=term)
                term *= decay
            else:
                np.multiply(data, decay, out=term)
            diff += term
        self.rule.update(diff, list(history), rate, self.iter)
        data -= diff

    def _scratch(self, like):
        """A work array shaped like `like`, carved from one buffer the size of the largest param."""
        n, buffer = like.size, getattr(self, "_scratch_buffer", None)
        if buffer is None or buffer.size < n or buffer.dtype != like.dtype:
            self._scratch_buffer = np.empty(max(b.count for b, _, _ in self.net.learnable_params), like.dtype)
        return self._scratch_buffer[:n].reshape(like.shape)

    def _clip_gradients(self):
        clip = self.param.clip_gradients
        if clip < 0:
            return
        sumsq = sum(float(np.dot(b.diff.ravel(), b.diff.ravel())) for b, _, _ in self.net.learnable_params)
        norm = np.sqrt(sumsq)
        if norm > clip:
            factor = clip / norm
            glog.info(f"Gradient clipping: scaling down gradients (L2 norm {_fmt(norm)} > {_fmt(clip)}) "
                      f"by scale factor {_fmt(factor)}", "sgd_solver.cpp:97")
            for b, _, _ in self.net.learnable_params:
                b.diff *= factor

    def solve(self, resume_file=None):
        p = self.param
        glog.info(f"Solving {self.net.name}", "solver.cpp:289")
        glog.info(f"Learning Rate Policy: {p.lr_policy}", "solver.cpp:290")
        self.requested_early_exit = False
        taken = self._hold_prefix()
        try:
            self._solve(resume_file)
        finally:
            if taken:
                self._release_prefix()

    def _solve(self, resume_file):
        p = self.param
        if resume_file and self.rank == 0:    # the other ranks take the root's state in on_solve (MPI)
            glog.info(f"Restoring previous solver status from {resume_file}", "solver.cpp:294")
            self.restore(resume_file)
        for callback in self.callbacks:
            callback.on_solve(self, resume_file)
        self.step(p.max_iter - self.iter)
        if p.snapshot_after_train and self._snapshot_iter != self.iter:
            self.snapshot()
        if self.requested_early_exit:
            glog.info("Optimization stopped early.", "solver.cpp:312")
            return
        if p.display and self.iter % p.display == 0:
            loss = self.net.forward_prefilled()
            for callback in self.callbacks:   # MPI: the mean over the ranks, as in training
                loss = callback.on_loss(self, loss)
            self._update_smoothed_loss(loss)
            glog.info(f"Iteration {self.iter}, loss = {_fmt(self._smoothed_loss)}", "solver.cpp:325")
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        glog.info("Optimization Done.", "solver.cpp:330")

    # ------------------------------------------------------------ testing
    def test_all(self):
        for i in range(len(self.test_nets)):
            self.test(i)

    def test(self, index=0):
        p, net = self.param, self.test_nets[index]
        glog.info(f"Iteration {self.iter}, Testing net (#{index})", "solver.cpp:347")
        sums = {name: 0.0 for name in net.outputs}
        total_loss = 0.0
        n = p.test_iter[index]
        for _ in range(n):
            request = self._requested_action()
            if request in ("snapshot", "snapshot_stop"):
                self.snapshot()
            if request in ("stop", "snapshot_stop"):
                self.requested_early_exit = True
                glog.info("Test interrupted.", "solver.cpp:364")
                return None
            loss = net.forward_prefilled()
            glog.progress(f"  testing net #{index}: batch {_ + 1}/{n}")
            if p.test_compute_loss:
                total_loss += loss
            for name in net.outputs:
                sums[name] = sums[name] + net.blobs[name].data.astype(np.float64).ravel()
        if p.test_compute_loss:
            glog.info(f"Test loss: {_fmt(total_loss / n)}", "solver.cpp:383")
        means = {name: np.asarray(s) / n for name, s in sums.items()}
        self._log_outputs(net, "Test", "solver.cpp:414", means)
        return means

    # ------------------------------------------------------------ snapshots
    def _resume_payload(self):
        nets = {"train": self.net, **{f"test{i}": n for i, n in enumerate(self.test_nets)}}
        layers = {}
        for tag, net in nets.items():
            for record in net.records:
                if hasattr(record.layer, "get_resume_state"):
                    layers[f"{tag}/{record.name}"] = record.layer.get_resume_state()
        return {"rng": rng.get_state(), "layers": layers, "losses": list(map(float, self._losses)),
                "smoothed_loss": float(self._smoothed_loss),
                "loss_index_base": int(self._loss_start)}

    def snapshot(self, suffix=""):
        """Write <prefix>_iter_N.caffemodel and .solverstate (each + `suffix`); returns their paths."""
        self._snapshot_iter = self.iter           # on every rank, so that they agree on the next one
        resume = self._resume_payload()
        for callback in self.callbacks:       # MPI: all ranks' data cursors go into rank 0's file
            resume = callback.on_snapshot(self, resume)
            if resume is None:                # not rank 0: rank 0 alone writes
                return None
        p = self.param
        as_hdf5 = p.snapshot_format == caffe_pb2.SolverParameter.HDF5
        model_path, state_path = (path + suffix for path in snapshot_paths(p.snapshot_prefix, self.iter, as_hdf5))
        if as_hdf5:
            glog.info(f"Snapshotting to HDF5 file {model_path}", "solver.cpp:474")
            self.net.save_hdf5(model_path, p.snapshot_diff)
            glog.info(f"Snapshotting solver state to HDF5 file {state_path}", "sgd_solver.cpp:296")
        else:
            glog.info(f"Snapshotting to binary proto file {model_path}", "solver.cpp:454")
            self.net.save(model_path, p.snapshot_diff)
            glog.info(f"Snapshotting solver state to binary proto file {state_path}", "sgd_solver.cpp:273")
        state = caffe_pb2.SolverState(iter=self.iter, learned_net=model_path, current_step=self.current_step)
        # Caffe's history order: every param's first history, then every param's second (AdaDelta, Adam).
        for k in range(self.rule.num_histories):
            for history in self._histories:
                array_to_blob(history[k], state.history.add())
        write_solverstate(state_path, state, resume, as_hdf5)
        return model_path, state_path

    def restore(self, state_path):
        state, resume = read_solverstate(state_path)
        expected = len(self._histories) * self.rule.num_histories
        if len(state.history) != expected:
            raise NetspecError(f"{state_path}: holds {len(state.history)} history blobs, but a {self.param.type} "
                               f"solver for this net needs {expected} (was it written by another solver type "
                               "or for another net?)")
        if not state.learned_net:
            raise NetspecError(f"{state_path}: records no weights file (its learned_net is empty), so a resume "
                               "would train on from random weights; start from a .caffemodel with --weights instead")
        model, note = resolve_learned_net(state_path, state.learned_net)
        if note:
            glog.warning(note, "solver.cpp:470")
        self.net.copy_from(model, require_all=True)
        n = len(self._histories)
        for k in range(self.rule.num_histories):
            for i, history in enumerate(self._histories):
                bp = state.history[k * n + i]
                arr = blob_to_array(bp)
                if arr.size != history[k].size:
                    raise NetspecError(f"{state_path}: history blob {k * n + i} has shape {arr.shape}, "
                                       f"the net's parameter has {history[k].shape}")
                history[k][...] = arr.reshape(history[k].shape)
        self.iter, self.current_step = state.iter, state.current_step
        if resume:
            try:
                check_resume_record(resume)
                self._apply_resume(resume)
            except (KeyError, TypeError, ValueError, AttributeError, OverflowError, NetspecError) as e:
                # OverflowError: numpy refuses a PCG64 state integer that does not fit (fuzz-found).
                glog.warning(f"{state_path}: its netspec resume data is damaged ({type(e).__name__}: {e}); resuming "
                             "without the exact random state, data positions and loss window", "solver.cpp:470")

    def _apply_resume(self, resume):
        rng.set_state(resume["rng"])
        nets = {"train": self.net, **{f"test{i}": n for i, n in enumerate(self.test_nets)}}
        for key, value in resume.get("layers", {}).items():
            tag, _, name = key.partition("/")
            net = nets.get(tag)
            layer = net.layer_dict.get(name) if net else None
            if layer is not None and hasattr(layer, "set_resume_state"):
                layer.set_resume_state(value)
        self._resumed_losses = (resume.get("losses", []), resume.get("smoothed_loss", 0.0),
                                resume.get("loss_index_base", 0))

    # ------------------------------------------------------------ pycaffe names
    def share_weights(self, net):
        net.share_with(self.net)


class SGDSolver(Solver):
    _type = "SGD"


class NesterovSolver(Solver):
    _type = "Nesterov"


class AdaGradSolver(Solver):
    _type = "AdaGrad"


class RMSPropSolver(Solver):
    _type = "RMSProp"


class AdaDeltaSolver(Solver):
    _type = "AdaDelta"


class AdamSolver(Solver):
    _type = "Adam"


def get_solver(solver_file):
    """pycaffe's caffe.get_solver: the solver class the file's `type` names."""
    return Solver(solver_file)
