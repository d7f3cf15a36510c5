"""How much of a LeNet training iteration goes to the Data layer (the target: under 5%).

    .venv/bin/python benchmarks/bench_data.py [--iters 300] [--batches 300]

Needs the MNIST LMDBs (`netspec get_mnist --dir data/mnist --lmdb`). Prints three figures:
  prepare   reading, parsing and transforming one batch of 64, timed in the main thread with the
            prefetch thread idle: the CPU work the background thread does per iteration;
  wait      the Data layer's forward during training: waiting for the prefetched batch plus copying
            it into the top blobs, the only data cost on the training path;
  iteration one solver iteration (forward, backward, update) of lenet_solver.prototxt.
Both shares are reported against the iteration.
"""
import argparse
import logging
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from netspec import glog  # noqa: E402
from netspec.solver import Solver  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=300, help="training iterations timed")
    parser.add_argument("--batches", type=int, default=300, help="batches prepared in the main thread")
    args = parser.parse_args()
    os.chdir(REPO)
    glog.configure(level=logging.WARNING)                 # no per-iteration log lines

    solver = Solver("solvers/lenet_solver.prototxt")
    data = next(layer for layer in solver.net.layers if layer.type == "Data")

    # Data-layer forward, timed inside training.
    waits = []
    forward = data.forward

    def timed_forward(bottom, top):
        start = time.perf_counter()
        forward(bottom, top)
        waits.append(time.perf_counter() - start)

    data.forward = timed_forward
    solver.step(20)                                     # warm-up: buffers, BLAS threads, page cache
    waits.clear()
    start = time.perf_counter()
    solver.step(args.iters)
    iteration = (time.perf_counter() - start) / args.iters
    wait = sum(waits) / len(waits)

    # The prefetch thread's work per batch, done here in the main thread after stopping the thread.
    data._prefetcher.stop()
    data._next_batch()
    start = time.perf_counter()
    for _ in range(args.batches):
        data._next_batch()
    prepare = (time.perf_counter() - start) / args.batches

    batch = data.batch_size
    print(f"LeNet train net, batch {batch}, {args.iters} iterations, {args.batches} batches prepared")
    print(f"  iteration  {iteration * 1e3:8.3f} ms")
    print(f"  prepare    {prepare * 1e3:8.3f} ms  ({100 * prepare / iteration:4.1f}% of an iteration, "
          "in the prefetch thread)")
    print(f"  wait       {wait * 1e3:8.3f} ms  ({100 * wait / iteration:4.1f}% of an iteration, "
          "on the training path)")


if __name__ == "__main__":
    main()
