"""Thread scaling and contention, as interleaved ratios in one process (netspec's threads, threads.py).

    .venv/bin/python benchmarks/bench_threads.py [--rounds 5] [--batch 10] [--mode test|train] [nets ...]
    .venv/bin/python benchmarks/bench_threads.py --busy [--threads N] [--blas N]   # quiet vs one busy process
    .venv/bin/python benchmarks/bench_threads.py --layers NET            # per-layer times, 1 vs 2 threads
    .venv/bin/python benchmarks/bench_threads.py --predict [--mode train]  # parallel share, predicted speed-up

Scaling: each round times one pass (TEST forward, or TRAIN forward + backward with force_backward)
at 1 thread and then at 2 (netspec.set_threads between them), so both see the same machine state;
the figure is the median over rounds of the per-round ratio t(1) / t(2).

--busy: a child process spins (`while True: pass`); each round times a pass with it stopped
(SIGSTOP) and then running (SIGCONT), at the default thread count (or --threads); the figure is
the median of t(busy) / t(quiet). The one-minute load average is printed beside each net: on a
shared machine other jobs move both figures.

Weights and inputs as bench_models.py / time_models.py fill them (deploy nets, batch --batch).
"""
import argparse
import os
import signal
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

NETS = {
    "caffenet": "models/caffenet/deploy.prototxt",
    "googlenet": "models/googlenet/deploy.prototxt",
    "resnet50": "models/resnet50/ResNet-50-deploy.prototxt",
    "squeezenet": "models/squeezenet/squeezenet_v1.1_deploy.prototxt",
    "mobilenet": "models/mobilenet/mobilenet_deploy.prototxt",
    "lenet": "models/lenet/lenet_train_test.prototxt",
}


DATA_ROOT = [REPO]     # where LeNet's MNIST LMDBs are (--data-root)


def build(name, batch, mode):
    from netspec import glog
    glog.configure(open(os.devnull, "w"))
    if name == "lenet" or mode == "train":
        from bench_models import build as build_train, train_step
        solver, seeds = build_train(NETS[name], 64 if name == "lenet" else batch, DATA_ROOT[0])
        return solver.net, lambda: train_step(solver, seeds)
    from time_models import build as build_test
    net = build_test(NETS[name], batch)
    return net, net.forward_prefilled


def what(name, args):
    return "train batch 64" if name == "lenet" else f"{args.mode} batch {args.batch}"


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def scaling(name, args):
    import netspec
    net, step = build(name, args.batch, args.mode)
    ratios, t1s, t2s = [], [], []
    for threads in (1, 2):
        netspec.set_threads(threads)
        step()      # warm-up: buffers, the pool
    for _ in range(args.rounds):
        netspec.set_threads(1)
        t1 = timed(step)
        netspec.set_threads(2)
        t2 = timed(step)
        ratios.append(t1 / t2)
        t1s.append(t1)
        t2s.append(t2)
    print(f"{name:11s} {what(name, args)}: 1 thread {np.median(t1s) * 1e3:8.1f} ms, 2 threads "
          f"{np.median(t2s) * 1e3:8.1f} ms, speed-up {np.median(ratios):.2f}x (rounds {min(ratios):.2f}-"
          f"{max(ratios):.2f}), load {os.getloadavg()[0]:.1f}", flush=True)


def busy(name, args):
    import netspec
    if args.threads:
        netspec.set_threads(args.threads)
    net, step = build(name, args.batch, args.mode)
    limiter = None
    if args.blas:   # the BLAS's own threads instead (netspec before threads.py: --threads 1 --blas 2)
        from threadpoolctl import threadpool_limits
        limiter = threadpool_limits(limits=args.blas, user_api="blas")  # noqa: F841 (held while timing)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        spinner.send_signal(signal.SIGSTOP)
        step()
        ratios, quiet, loaded = [], [], []
        for _ in range(args.rounds):
            spinner.send_signal(signal.SIGSTOP)
            time.sleep(0.05)
            tq = timed(step)
            spinner.send_signal(signal.SIGCONT)
            time.sleep(0.05)
            tb = timed(step)
            ratios.append(tb / tq)
            quiet.append(tq)
            loaded.append(tb)
    finally:
        spinner.kill()
        spinner.wait()
    blas = f", BLAS {args.blas} threads" if args.blas else ""
    print(f"{name:11s} {what(name, args)}, {netspec.get_threads()} threads{blas}: quiet "
          f"{np.median(quiet) * 1e3:8.1f} ms, beside a busy process {np.median(loaded) * 1e3:8.1f} ms, "
          f"slow-down {np.median(ratios):.2f}x (rounds {min(ratios):.2f}-{max(ratios):.2f}), "
          f"load {os.getloadavg()[0]:.1f}", flush=True)


def layers(name, args):
    import netspec
    net, step = build(name, args.batch, args.mode)
    records = net.records
    total = {1: np.zeros(len(records)), 2: np.zeros(len(records))}
    back = {1: np.zeros(len(records)), 2: np.zeros(len(records))}
    for r in range(args.rounds + 1):
        for threads in (1, 2):
            netspec.set_threads(threads)
            for i, rec in enumerate(records):
                t = timed(rec.forward)
                if r:
                    total[threads][i] += t
            if args.mode == "train":
                for i in reversed(range(len(records))):
                    if records[i].need_backward:
                        t = timed(records[i].backward)
                        if r:
                            back[threads][i] += t
    by_type = {}
    for i, rec in enumerate(records):
        k = rec.layer.type
        a = by_type.setdefault(k, np.zeros(4))
        a += (total[1][i], total[2][i], back[1][i], back[2][i])
    print(f"{name} {what(name, args)}, ms per pass by layer type (1 thread / 2 threads):")
    for k, (f1, f2, b1, b2) in sorted(by_type.items(), key=lambda kv: -kv[1][0] - kv[1][2]):
        n = args.rounds
        print(f"  {k:18s} fwd {f1 / n * 1e3:8.2f} / {f2 / n * 1e3:8.2f}   bwd {b1 / n * 1e3:8.2f} / {b2 / n * 1e3:8.2f}")


def schedule(times, workers):
    """Makespan of chunks taken in order by the first free of `workers` threads (parallel_for's rule)."""
    free = [0.0] * workers
    for t in times:
        k = free.index(min(free))
        free[k] += t
    return max(free)


def predict(name, args):
    """At one thread, the time inside parallel_for chunks and outside; the 2- and 3-thread times
    that follow if chunks were scheduled as parallel_for does and nothing else changed. Machine
    load scales both parts alike, so the ratios hold on a busy machine, which timed ratios do not."""
    import netspec
    from netspec import threads
    netspec.set_threads(1)
    net, step = build(name, args.batch, args.mode)
    step()
    totals, calls = [], []
    for _ in range(args.rounds):
        threads.trace = []
        t = timed(step)
        calls = threads.trace
        threads.trace = None
        totals.append((t, calls))
    t, traced = min(totals, key=lambda tc: tc[0])
    calls = [c for _, c in traced]
    inside = sum(sum(c) for c in calls)
    serial = t - inside
    two = serial + sum(schedule(c, 2) for c in calls)
    three = serial + sum(schedule(c, 3) for c in calls)
    lost = {}
    for where, c in traced:     # time a second thread would sit idle, by chunk function
        lost[where] = lost.get(where, 0.0) + 2 * schedule(c, 2) - sum(c)
    worst = sorted(lost.items(), key=lambda kv: -kv[1])[:args.worst]
    print(f"{name:11s} {what(name, args)}: {t * 1e3:8.1f} ms at 1 thread, {inside / t:5.1%} in "
          f"{len(calls)} parallel_for calls; predicted speed-up {t / two:.2f}x at 2 threads, {t / three:.2f}x at 3; "
          f"serial {serial * 1e3:.1f} ms, load {os.getloadavg()[0]:.1f}", flush=True)
    if worst:
        print("    idle second thread by chunk function (ms): " + ", ".join(
            f"{where} {ms * 1e3:.0f}" for where, ms in worst), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--mode", choices=["test", "train"], default="test")
    ap.add_argument("--busy", action="store_true", help="quiet vs one busy process, at the default threads")
    ap.add_argument("--threads", type=int, default=None, help="with --busy: this thread count")
    ap.add_argument("--blas", type=int, default=None, help="with --busy: let the BLAS run this many threads")
    ap.add_argument("--data-root", default=REPO, help="folder holding data/mnist/*_lmdb (for lenet)")
    ap.add_argument("--layers", action="store_true", help="per-layer-type times at 1 and 2 threads")
    ap.add_argument("--predict", action="store_true",
                    help="the time inside parallel_for at 1 thread, and the speed-up it allows")
    ap.add_argument("--worst", type=int, default=0, help="with --predict: name the N chunk functions "
                    "where a second thread would idle most")
    ap.add_argument("nets", nargs="*", help=f"of {', '.join(NETS)} (default: all but lenet)")
    args = ap.parse_args()
    DATA_ROOT[0] = args.data_root
    run = busy if args.busy else layers if args.layers else predict if args.predict else scaling
    for name in args.nets or [n for n in NETS if n != "lenet"]:
        run(name, args)


if __name__ == "__main__":
    main()
