"""Caffe's `caffe` tool: train, test, time and device_query, with Caffe's flags and log lines."""
import os
import signal

import click
import numpy as np

from .. import glog
from ..net import Net
from ..parallel import from_environment
from ..proto import caffe_pb2
from ..schema import read_solver
from ..solver import Solver, set_on_divergence
from ..threads import default_threads, parse_count, set_threads
from ..timing import describe_machine, time_net
from .base import command

_SIGNAL_EFFECTS = click.Choice(["stop", "snapshot", "none"])


def _split_list(value):
    return [s for part in (value or ()) for s in part.split(",") if s]


def _phase(value):
    return caffe_pb2.Phase.Value(value.upper())


class _Signals:
    """Turns SIGINT/SIGHUP/SIGTERM into solver actions, as Caffe's SignalHandler does.

    SIGTERM (what Slurm and Kubernetes send before SIGKILL) has no handler in
    Caffe, so its run dies without a snapshot; here its `stop` (the default)
    writes a snapshot and then stops, whatever snapshot_after_train says. A
    second SIGINT or SIGTERM while a stop is asked for, or before the first
    request was acted on, ends the process at once (exit 130): the way out when
    something blocks; a third exits without unwinding.
    """

    def __init__(self, sigint_effect, sighup_effect, sigterm_effect="stop"):
        self.effects = {signal.SIGINT: sigint_effect, signal.SIGHUP: sighup_effect,
                        signal.SIGTERM: "snapshot_stop" if sigterm_effect == "stop" else sigterm_effect}
        self.pending = "none"
        self.stopping = False
        self.forced = 0

    def install(self):
        for sig in self.effects:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        effect = self.effects.get(signum, "none")
        ends = signum in (signal.SIGINT, signal.SIGTERM) and effect != "none"
        if ends and (self.stopping or self.pending != "none"):
            self.forced += 1
            if self.forced > 1:
                os._exit(130)
            raise KeyboardInterrupt
        if effect != "none":
            self.pending = effect
        if effect in ("stop", "snapshot_stop"):
            self.stopping = True
            snap = ("a snapshot is written" if effect == "snapshot_stop"
                    else "a snapshot is written unless snapshot_after_train is false")
            glog.info(f"{signal.Signals(signum).name} received: stopping after this iteration ({snap}); "
                      "send it again to end at once", "signal_handler.cpp:63")

    def __call__(self):
        action, self.pending = self.pending, "none"
        return action


def _refuse_gpu(gpu):
    if gpu is not None:
        raise click.UsageError(f"--gpu={gpu}: netspec runs on the CPU only; drop the --gpu flag")


def _use_threads(threads):
    """--threads N, else NETSPEC_THREADS, else the cores: checked now, so a bad value is one line before any work."""
    set_threads(parse_count(threads, "--threads") if threads is not None else default_threads())


@command()
@click.option("--solver", required=True, type=click.Path(dir_okay=False), help="Solver prototxt or YAML.")
@click.option("--snapshot", type=click.Path(dir_okay=False), help="Resume from this .solverstate.")
@click.option("--weights", help="Comma-separated .caffemodel files to start from (fine-tuning).")
@click.option("--sigint_effect", type=_SIGNAL_EFFECTS, default="stop", show_default=True)
@click.option("--sighup_effect", type=_SIGNAL_EFFECTS, default="snapshot", show_default=True)
@click.option("--sigterm_effect", type=_SIGNAL_EFFECTS, default="stop", show_default=True,
              help="stop: snapshot, then stop (batch schedulers send SIGTERM before SIGKILL).")
@click.option("--gpu", default=None, hidden=True)
@click.option("--level", type=int, default=None, help="Override the train net's level.")
@click.option("--stage", multiple=True, help="Train net stages (comma-separated).")
@click.option("--on_divergence", type=click.Choice(["stop", "continue"]), default="stop", show_default=True,
              help="At a NaN/inf loss: stop with a .diverged snapshot, or carry on as Caffe does.")
@click.option("--threads", default=None, help="Threads to compute with (default: NETSPEC_THREADS, else the "
              "cores this process may use); the BLAS runs one thread under each.")
def train(solver, snapshot, weights, sigint_effect, sighup_effect, sigterm_effect, gpu, level, stage, on_divergence,
          threads):
    """Train a net (caffe train)."""
    _refuse_gpu(gpu)
    _use_threads(threads)
    set_on_divergence(on_divergence)
    if snapshot and weights:
        raise click.UsageError("give either --snapshot (resume) or --weights (fine-tune), not both")
    mpi = from_environment()        # MPI: this rank's DataParallel under `mpirun -n N` (N > 1), else None
    param = read_solver(solver)
    if level is not None:
        param.train_state.level = level
    for s in _split_list(stage):
        param.train_state.stage.append(s)
    s = Solver(solver, param, rank=mpi.rank if mpi is not None else 0)
    # MPI: rank 0 alone reads --weights; the others get its weights when solving starts.
    for w in _split_list([weights] if weights and (mpi is None or mpi.rank == 0) else []):
        glog.info(f"Finetuning from {w}", "caffe.cpp:175")
        s.net.copy_from(w)
    signals = _Signals(sigint_effect, sighup_effect, sigterm_effect)
    signals.install()
    s.action_request = signals
    s.snapshot_on_user_exit = sigint_effect in ("stop", "snapshot")
    if mpi is not None:
        s.add_callback(mpi)
    glog.info("Starting Optimization", "caffe.cpp:248")
    s.solve(snapshot)


@command()
@click.option("--model", required=True, type=click.Path(dir_okay=False), help="Net prototxt or YAML.")
@click.option("--weights", required=True, help="Trained .caffemodel (comma-separated for several).")
@click.option("--iterations", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--phase", type=click.Choice(["TRAIN", "TEST"], case_sensitive=False), default="TEST",
              show_default=True)
@click.option("--level", type=int, default=0)
@click.option("--stage", multiple=True)
@click.option("--gpu", default=None, hidden=True)
@click.option("--threads", default=None, help="Threads to compute with (default: NETSPEC_THREADS, else the "
              "cores this process may use); the BLAS runs one thread under each.")
def test(model, weights, iterations, phase, level, stage, gpu, threads):
    """Score a trained net (caffe test)."""
    _refuse_gpu(gpu)
    _use_threads(threads)
    # Only the outputs are read: blobs no later layer reads share memory (none, if backward runs).
    net = Net(model, _phase(phase), level=level, stages=_split_list(stage), reuse_memory=True)
    for w in _split_list([weights]):
        net.copy_from(w)
    glog.info(f"Running for {iterations} iterations.", "caffe.cpp:304")
    sums, total_loss = {}, 0.0
    for i in range(iterations):
        total_loss += net.forward_prefilled()
        for name in net.outputs:
            values = net.blobs[name].data.ravel().astype(np.float64)
            sums[name] = sums.get(name, 0.0) + values
            for v in values:
                glog.info(f"Batch {i}, {name} = {v:g}", "caffe.cpp:333")
    glog.info(f"Loss: {total_loss / iterations:g}", "caffe.cpp:338")
    for name in net.outputs:
        w = net.blob_loss_weights.get(name, 0.0)
        for v in np.ravel(sums[name] / iterations):
            extra = f" (* {w:g} = {w * v:g} loss)" if w else ""
            glog.info(f"{name} = {v:g}{extra}", "caffe.cpp:350")


@command("time")
@click.option("--model", required=True, type=click.Path(dir_okay=False), help="Net prototxt or YAML.")
@click.option("--iterations", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--phase", type=click.Choice(["TRAIN", "TEST"], case_sensitive=False), default="TRAIN",
              show_default=True)
@click.option("--weights", default=None)
@click.option("--level", type=int, default=0)
@click.option("--stage", multiple=True)
@click.option("--gpu", default=None, hidden=True)
@click.option("--threads", default=None, help="Threads to compute with (default: NETSPEC_THREADS, else the "
              "cores this process may use); the BLAS runs one thread under each.")
def time_command(model, iterations, phase, weights, level, stage, gpu, threads):
    """Benchmark per-layer forward and backward (caffe time)."""
    _refuse_gpu(gpu)
    _use_threads(threads)
    # As `netspec test` runs it: in TEST phase (no backward) intermediates share memory.
    net = Net(model, _phase(phase), level=level, stages=_split_list(stage), reuse_memory=True)
    if weights:
        net.copy_from(weights)
    time_net(net, iterations, backward=_phase(phase) == 0)


@command("device_query")
@click.option("--gpu", default=None, hidden=True)
def device_query(gpu):
    """Describe the CPU and BLAS that netspec computes on."""
    _refuse_gpu(gpu)
    for line in describe_machine():
        glog.info(line, "caffe.cpp:122")
