"""Data-parallel scaling: LeNet training throughput, one process against `mpirun -n 2`.

    .venv/bin/python benchmarks/bench_mpi.py [--iters 200] [--repeat 2]

Runs `netspec train` on LeNet over the MNIST training LMDB (data/mnist/mnist_train_lmdb,
built from data/mnist/*.gz into a temporary folder when missing), without tests or
snapshots, in four set-ups:

    1 process  x 2 BLAS threads, batch 64               (the usual single-process run)
    1 process  x 1 BLAS thread,  batch 64               (what one rank gets)
    2 ranks    x 1 thread each,  batch 32 per rank      (same effective batch, 64)
    2 ranks    x 1 thread each,  batch 64 per rank      (same per-process batch; effective 128)

iter/s comes from rank 0's display lines (glog timestamps), after a warm-up interval;
samples/s = iter/s x effective batch. Each set-up runs `--repeat` times and the best
run counts (the machine is shared: interference only slows a run down). Last, the
cost of the gradient exchange alone: DataParallel.reduce_gradients on LeNet's
431,080 parameters under `mpirun -n 2` (`--allreduce-only` is that part, run per rank).
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from netspec.proto import caffe_pb2  # noqa: E402
from netspec.schema import read_net  # noqa: E402

DISPLAY = 20


def train_lmdb(scratch):
    db = os.path.join(REPO, "data", "mnist", "mnist_train_lmdb")
    if os.path.isfile(os.path.join(db, "data.mdb")):
        return db
    from netspec.datasets.mnist import convert_mnist
    db = os.path.join(scratch, "mnist_train_lmdb")
    mnist = os.path.join(REPO, "data", "mnist")
    convert_mnist(os.path.join(mnist, "train-images-idx3-ubyte.gz"),
                  os.path.join(mnist, "train-labels-idx1-ubyte.gz"), db, show_progress=False)
    return db


def write_solver(scratch, db, batch, iters):
    net = read_net(os.path.join(REPO, "models", "lenet", "lenet_train_test.prototxt"))
    keep = [l for l in net.layer if not any(r.phase == caffe_pb2.TEST for r in l.include)]
    del net.layer[:]
    net.layer.extend(keep)
    for layer in net.layer:
        if layer.type == "Data":
            layer.data_param.source = db
            layer.data_param.batch_size = batch
    net_path = os.path.join(scratch, f"lenet_{batch}.prototxt")
    with open(net_path, "w") as f:
        f.write(str(net))
    solver = caffe_pb2.SolverParameter(net=net_path, base_lr=0.01, momentum=0.9, weight_decay=0.0005,
                                       lr_policy="inv", gamma=0.0001, power=0.75, display=DISPLAY,
                                       max_iter=iters, snapshot_after_train=False, random_seed=1)
    path = os.path.join(scratch, f"solver_{batch}.prototxt")
    with open(path, "w") as f:
        f.write(str(solver))
    return path


def iter_per_s(log):
    """Iterations per second between the first and last display line after the warm-up one."""
    points = []
    pattern = r"^I\d{4} (\d\d):(\d\d):([\d.]+) \d+ solver\.cpp:\d+\] Iteration (\d+) \("
    for h, m, s, it in re.findall(pattern, log, re.M):
        points.append((int(it), int(h) * 3600 + int(m) * 60 + float(s)))
    points = [p for p in points if p[0] >= DISPLAY]          # iteration 0..DISPLAY warms up
    if len(points) < 2:
        raise SystemExit("too few display lines:\n" + log[-2000:])
    (i0, t0), (i1, t1) = points[0], points[-1]
    return (i1 - i0) / (t1 - t0)


def run(cmd, threads, scratch):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    r = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return iter_per_s(r.stderr)


def time_allreduce(calls=300):
    """Per-rank: median and best time of one reduce_gradients on LeNet's parameters (ms)."""
    import time
    from netspec import glog
    from netspec.net import Net
    from netspec.parallel import from_environment
    glog.configure(open(os.devnull, "w"))
    dp = from_environment()
    net = read_net(os.path.join(REPO, "models", "lenet", "lenet.prototxt"))
    net = Net(net, caffe_pb2.TEST)          # only the parameters matter here
    dp._learnable = [blob for blob, _, _ in net.learnable_params]
    from netspec.parallel import make_buckets
    dp._buckets = make_buckets(dp._learnable)
    dp._tail = dp._buckets[-1].buffer[-3:]
    times = []
    for _ in range(calls):
        dp.comm.Barrier()
        tic = time.perf_counter()
        dp.reduce_gradients(1.0)
        times.append(time.perf_counter() - tic)
    times = sorted(times[20:])
    if dp.rank == 0:
        count = sum(b.count for b in dp._learnable)
        print(f"reduce_gradients, {count} parameters in {len(dp._buckets)} bucket(s): median "
              f"{1e3 * times[len(times) // 2]:.2f} ms, best {1e3 * times[0]:.2f} ms per iteration")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--allreduce-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.allreduce_only:
        return time_allreduce()
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        raise SystemExit("mpirun not found: apt-get install openmpi-bin libopenmpi-dev; pip install -e '.[mpi]' in the checkout")
    with tempfile.TemporaryDirectory() as scratch:
        db = train_lmdb(scratch)
        solvers = {b: write_solver(scratch, db, b, args.iters) for b in (32, 64)}
        netspec = [sys.executable, "-m", "netspec", "train"]
        two = [mpirun, "-n", "2", "--bind-to", "core"]
        setups = [
            ("1 process  x 2 threads, batch 64", netspec + [f"--solver={solvers[64]}"], 2, 64),
            ("1 process  x 1 thread,  batch 64", netspec + [f"--solver={solvers[64]}"], 1, 64),
            ("2 ranks    x 1 thread,  batch 32 each", two + netspec + [f"--solver={solvers[32]}"], 1, 64),
            ("2 ranks    x 1 thread,  batch 64 each", two + netspec + [f"--solver={solvers[64]}"], 1, 128),
        ]
        print(f"LeNet, {args.iters} iterations per run (first {DISPLAY} are warm-up), best of {args.repeat}; "
              f"{os.cpu_count()} cores")
        print(f"{'set-up':40s} {'eff. batch':>10s} {'iter/s':>8s} {'samples/s':>10s}")
        for name, cmd, threads, batch in setups:
            best = max(run(cmd, threads, scratch) for _ in range(args.repeat))
            print(f"{name:40s} {batch:10d} {best:8.2f} {best * batch:10.0f}", flush=True)
        r = subprocess.run([mpirun, "-n", "2", "--bind-to", "core", sys.executable, os.path.abspath(__file__),
                            "--allreduce-only"], capture_output=True, text=True,
                           env=dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1"))
        print(r.stdout.strip() or r.stderr[-2000:])


if __name__ == "__main__":
    main()
