"""Net setup time against the number of layers: it must grow linearly (issue 13, item 10).

    python benchmarks/bench_setup.py                 # 25k, 50k, 100k layers
    python benchmarks/bench_setup.py --layers 100000 200000

A chain of Input -> N ReLU layers (each its own top, 1x1 blobs), written as
prototxt; the figures are the prototxt parse and the Net construction (Caffe's
Net::Init: filter, splits, layer creation, wiring, setup), in seconds, and the
time per layer, which stays flat when setup is linear. Logging goes to
/dev/null (a 100k-layer net logs ~500k lines). The CPU seconds (this process's, parse and
setup together) drift less than the wall-clock ones on a shared machine.
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netspec import glog  # noqa: E402
from netspec.net import Net  # noqa: E402
from netspec.proto import caffe_pb2  # noqa: E402
from netspec.schema import read_net  # noqa: E402


def chain_prototxt(n):
    lines = ['name: "chain"',
             'layer { name: "in" type: "Input" top: "b0" input_param { shape { dim: 1 dim: 1 } } }']
    lines += [f'layer {{ name: "r{i}" type: "ReLU" bottom: "b{i - 1}" top: "b{i}" }}' for i in range(1, n + 1)]
    return "\n".join(lines) + "\n"


def measure(n, folder):
    path = os.path.join(folder, f"chain_{n}.prototxt")
    with open(path, "w") as f:
        f.write(chain_prototxt(n))
    c0, t0 = time.process_time(), time.perf_counter()
    param = read_net(path)
    t1 = time.perf_counter()
    net = Net(param, caffe_pb2.TEST)
    t2, c2 = time.perf_counter(), time.process_time()
    assert len(net.layers) == n + 1
    net.close()
    return t1 - t0, t2 - t1, c2 - c0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[25000, 50000, 100000])
    args = parser.parse_args()
    glog.configure(open(os.devnull, "w"))
    print(f"{'layers':>8} {'parse s':>8} {'setup s':>8} {'setup us/layer':>15} {'cpu s':>8}")
    with tempfile.TemporaryDirectory() as folder:
        for n in args.layers:
            parse, setup, cpu = measure(n, folder)
            print(f"{n:>8} {parse:>8.2f} {setup:>8.2f} {setup / n * 1e6:>15.1f} {cpu:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
