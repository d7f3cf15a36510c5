"""The compiled depthwise kernels of two builds against each other, on MobileNet's 13 layers.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_depthwise.py \\
        NEW.so OLD.so [--batch 10] [--rounds 15] [--dtype float32]

Each .so is a build of netspec/_native.c (copy one aside before rebuilding); both are loaded
into this process and called alternately, one call of each per round, on the same arrays, at
one thread. Printed per layer and direction: each build's median milliseconds, its GF/s (two
flops per multiply-add), and the median of the per-round ratios (new / old); then the sums.
"""
import argparse
import importlib.machinery
import importlib.util
import statistics
import time

import numpy as np

# MobileNet v1 (224): (channels, size, stride) of its depthwise 3x3 layers, pad 1.
LAYERS = [(32, 112, 1), (64, 112, 2), (128, 56, 1), (128, 56, 2), (256, 28, 1), (256, 28, 2)] \
    + [(512, 14, 1)] * 5 + [(512, 14, 2), (1024, 7, 1)]


def load(path):
    """The module netspec._native built at `path`, loaded beside any other copy."""
    loader = importlib.machinery.ExtensionFileLoader("netspec._native", path)
    spec = importlib.util.spec_from_file_location("netspec._native", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def calls(kernels, c, size, stride, batch, dtype, rng):
    """{direction: a call running that kernel over the whole layer}."""
    out = (size + 2 - 3) // stride + 1
    g = (c, size, size, 3, 3, stride, stride, 1, 1, 1, 1, out, out)
    x = rng.standard_normal((batch, c, size, size)).astype(dtype)
    w = rng.standard_normal((c, 9)).astype(dtype)
    dy = rng.standard_normal((batch, c, out, out)).astype(dtype)
    y, dx, dw = np.empty_like(dy), np.empty_like(x), np.zeros_like(w)
    return {"forward": lambda: kernels.depthwise_forward(x, w, None, y, g, 1, batch, 0, batch * c),
            "data": lambda: kernels.depthwise_backward_data(dy, w, None, dx, g, 1, batch, 0, batch * c),
            "weights": lambda: kernels.depthwise_backward_weights(dy, x, None, dw, g, 1, batch, 0, c)}, \
        2 * 9 * batch * c * out * out


def seconds(run):
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("new")
    parser.add_argument("old")
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    builds = [load(args.new), load(args.old)]
    rng = np.random.default_rng(0)
    totals = {}
    print(f"{'layer':>16} {'kernel':>8} {'new ms':>8} {'old ms':>8} {'new GF/s':>8} {'old GF/s':>8} {'new/old':>7}")
    for c, size, stride in LAYERS:
        pairs = [calls(k, c, size, stride, args.batch, np.dtype(args.dtype), rng) for k in builds]
        flops = pairs[0][1]
        for kind in ("forward", "data", "weights"):
            new, old = pairs[0][0][kind], pairs[1][0][kind]
            new(), old()
            times = [(seconds(new), seconds(old)) for _ in range(args.rounds)]
            t_new, t_old = (statistics.median(t[i] for t in times) for i in (0, 1))
            ratio = statistics.median(a / b for a, b in times)
            total = totals.setdefault(kind, [0.0, 0.0])
            total[0] += t_new
            total[1] += t_old
            print(f"{f'{c}x{size} s{stride}':>16} {kind:>8} {t_new * 1e3:8.3f} {t_old * 1e3:8.3f} "
                  f"{flops / t_new / 1e9:8.2f} {flops / t_old / 1e9:8.2f} {ratio:7.3f}")
    for kind, (t_new, t_old) in totals.items():
        print(f"{'all 13':>16} {kind:>8} {t_new * 1e3:8.3f} {t_old * 1e3:8.3f} {'':>8} {'':>8} {t_new / t_old:7.3f}")


if __name__ == "__main__":
    main()
