"""Two netspec trees against each other on one net's training step, per layer type, by CPU time.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/ab_trees.py \\
        --tree /path/to/new --tree /path/to/old [--rounds 8] [--iterations 4] [--batch 10] MODEL

Each tree is a checkout with its compiled kernels built in place (`python setup.py build_ext
--inplace`); its code is imported through PYTHONPATH in a child process of its own, and the
children alternate, round by round. A step is bench_models' training iteration (clear diffs,
forward, backward, SGD update). The BLAS runs one thread, so the step's process CPU time is
its work, which other processes on the machine barely change, while wall-clock time on this
machine drifts up to 2x. Each layer object's forward and backward are wrapped, so the figures
come out per layer type in any tree, old or new. Printed: medians per tree and the median and
geometric mean of the per-round ratios (first tree / second tree).
"""
import argparse
import collections
import json
import math
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(model, iterations, batch):
    """In the child: time `iterations` steps (after one warm-up) of the tree on PYTHONPATH; JSON to stdout."""
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    import bench_models
    tree = os.environ["PYTHONPATH"]
    sys.path.insert(0, tree)        # before the repository bench_models put first
    import netspec
    from netspec import glog
    if not os.path.abspath(netspec.__file__).startswith(os.path.abspath(tree) + os.sep):
        sys.exit(f"netspec came from {netspec.__file__}, not from the tree {tree}")
    glog.configure(open(os.devnull, "w"))
    solver, seeds = bench_models.build(model, batch, REPO)
    net = solver.net
    spent = collections.defaultdict(float)
    for layer in net.layers:
        for kind in ("forward", "backward"):
            run = getattr(layer, kind)

            def timed(*args, _run=run, _key=f"{layer.type}.{kind}"):
                start = time.process_time()
                result = _run(*args)
                spent[_key] += time.process_time() - start
                return result
            setattr(layer, kind, timed)
    steps = []
    for it in range(iterations + 1):
        if it == 1:
            spent.clear()       # the first step warms caches and scratch buffers
        start = time.process_time()
        bench_models.train_step(solver, seeds)
        solver.iter += 1
        if it:
            steps.append(time.process_time() - start)
    figures = {key: seconds / iterations * 1e3 for key, seconds in spent.items()}
    figures["step"] = statistics.median(steps) * 1e3
    print(json.dumps(figures))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a prototxt under the repository, e.g. models/squeezenet/squeezenet_v1.1_deploy.prototxt")
    ap.add_argument("--tree", action="append", required=True, help="a checkout to time (give two)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.model, args.iterations, args.batch)
    if len(args.tree) != 2:
        ap.error("give --tree twice: the two checkouts to compare")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", NETSPEC_THREADS="1")
    samples = {tree: [] for tree in args.tree}
    for _ in range(args.rounds):
        for tree in args.tree:
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", args.model,
                                  "--tree", tree, "--iterations", str(args.iterations), "--batch", str(args.batch)],
                                 env=dict(env, PYTHONPATH=os.path.abspath(tree)), capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{tree}: the child failed: {out.stderr.strip().splitlines()[-1:]}")
            samples[tree].append(json.loads(out.stdout.strip().splitlines()[-1]))
    a, b = (samples[t] for t in args.tree)
    print(f"{args.model}, batch {args.batch}, {args.rounds} rounds of {args.iterations} steps, CPU ms per step")
    print(f"first tree: {args.tree[0]}\nsecond tree: {args.tree[1]}")
    keys = sorted(a[0], key=lambda k: (k != "step", -a[0][k]))
    for key in keys:
        first = statistics.median(s.get(key, 0.0) for s in a)
        second = statistics.median(s.get(key, 0.0) for s in b)
        if key != "step" and max(first, second) < 1.0:
            continue        # layers under a millisecond: their ratios are noise
        ratios = [x.get(key, 0.0) / y[key] for x, y in zip(a, b) if y.get(key) and x.get(key)]
        if not ratios:
            continue
        geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        print(f"{key:28s} {first:9.1f} {second:9.1f}   ratio median {statistics.median(ratios):.3f}, "
              f"geometric mean {geo:.3f}")


if __name__ == "__main__":
    main()
