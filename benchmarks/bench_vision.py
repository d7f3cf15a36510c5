"""Time LeNet's vision layers at batch 64 (float32): forward and backward per layer, plus the GEMM floor.

    .venv/bin/python benchmarks/bench_vision.py [--batch 64] [--rounds 15]

The GEMM floor is the time of the BLAS calls alone for the same shapes (the column
matrices already built): forward W @ col, backward dW += dtop @ col^T and, where a
bottom gradient is needed, dcol = W^T @ dtop; once as the layer issues them and once
as a single 2-D GEMM per product. Each figure is the best over rounds of the mean
over a few calls, after a warm-up (the machine is shared: interference only adds).
"""
import argparse
import os
import sys
import time

import numpy as np
from google.protobuf import text_format

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, REPO)

from netspec.blob import Blob  # noqa: E402
from netspec.layers import LAYER_REGISTRY  # noqa: E402
from netspec.proto import caffe_pb2  # noqa: E402
from netspec.rng import set_seed  # noqa: E402
from netspec.layers.im2col import add_weight_grad  # noqa: E402


def make(text, shape, num_tops=1):
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    layer = LAYER_REGISTRY[lp.type](lp)
    bottom = Blob(shape)
    bottom.data[...] = np.random.default_rng(0).standard_normal(shape)
    top = [Blob() for _ in range(num_tops)]
    layer.setup([bottom], top)
    layer.reshape([bottom], top)
    top[0].diff[...] = np.random.default_rng(1).standard_normal(top[0].shape)
    return layer, [bottom], top


def timed(fn, rounds, calls=5):
    for _ in range(3):
        fn()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls * 1e3)
    # The minimum: the machine is shared, and interference only ever adds time.
    return min(samples)


def gemm_floor(layer, need_dx, rounds):
    """(forward, backward) ms of the layer's own BLAS calls, and of one plain 2-D GEMM per product."""
    g, groups, m = layer.geom, layer.group, layer.num_output
    rng = np.random.default_rng(2)
    col = rng.standard_normal(g.cols_shape(g.rows, g.out_count), dtype=np.float32)
    dt = rng.standard_normal(g.cols_shape(m, g.out_count), dtype=np.float32)
    out = np.empty_like(dt)
    dcol = np.empty_like(col)
    w = layer.grouped_weights()
    acc = np.zeros_like(w)

    parts = g.sample_parts() if not g.batch_inner else [slice(None)]

    def fwd():
        for part in parts:
            np.matmul(w, g.grouped(col[part], groups), out=g.grouped(out[part], groups))

    def bwd():
        for part in parts:
            dt_g = g.grouped(dt[part], groups)
            add_weight_grad(dt_g, g.grouped(col[part], groups), acc)
            if need_dx:
                np.matmul(w.transpose(0, 2, 1), dt_g, out=g.grouped(dcol[part], groups))
    own = (timed(fwd, rounds), timed(bwd, rounds))
    cols = g.num * g.out_count
    w2 = w.reshape(m, -1)
    col2 = col.reshape(g.rows, cols)
    dt2 = dt.reshape(m, cols)
    out2 = out.reshape(m, cols)
    dcol2 = dcol.reshape(g.rows, cols)
    wtmp = np.empty((g.rows, m), np.float32)

    def bwd2():
        np.matmul(col2, dt2.T, out=wtmp)
        if need_dx:
            np.matmul(w2.T, dt2, out=dcol2)
    plain = (timed(lambda: np.matmul(w2, col2, out=out2), rounds), timed(bwd2, rounds))
    return own, plain


def lenet_net(batch):
    """models/lenet/lenet_train_test.prototxt (TRAIN) with its Data layer swapped for random Input blobs."""
    from netspec.net import Net
    from netspec.schema import read_net
    param = read_net(os.path.join(REPO, "models", "lenet", "lenet_train_test.prototxt"))
    layers = [lp for lp in param.layer if lp.type != "Data"]
    del param.layer[:]
    source = caffe_pb2.LayerParameter(name="data", type="Input", top=["data", "label"])
    source.input_param.shape.add(dim=[batch, 1, 28, 28])
    source.input_param.shape.add(dim=[batch])
    param.layer.extend([source] + layers)
    net = Net(param, phase="train")
    rng = np.random.default_rng(3)
    net.blobs["data"].data[...] = rng.random(net.blobs["data"].shape)
    net.blobs["label"].data[...] = rng.integers(0, 10, batch)
    return net


def time_lenet(batch, rounds):
    """(forward+backward ms, [(layer, fwd ms, bwd ms)]) for the whole LeNet, best over rounds."""
    import netspec.glog as glog
    glog.configure(open(os.devnull, "w"))
    net = lenet_net(batch)
    per_layer = {record.name: [1e9, 1e9] for record in net.records}
    best = 1e9
    for _ in range(rounds + 3):
        start = time.perf_counter()
        for record in net.records:
            t = time.perf_counter()
            record.forward()
            per_layer[record.name][0] = min(per_layer[record.name][0], time.perf_counter() - t)
        for record in reversed(net.records):
            if record.need_backward:
                t = time.perf_counter()
                record.backward()
                per_layer[record.name][1] = min(per_layer[record.name][1], time.perf_counter() - t)
        best = min(best, time.perf_counter() - start)
    rows = [(name, f * 1e3, (b if b < 1e9 else 0) * 1e3) for name, (f, b) in per_layer.items()]
    return best * 1e3, rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--lenet", action="store_true", help="also time the whole LeNet train net")
    args = ap.parse_args()
    n = args.batch
    set_seed(1)
    filler = 'weight_filler { type: "xavier" } bias_filler { type: "constant" }'
    cases = [
        ("conv1", f'name: "conv1" type: "Convolution" convolution_param {{ num_output: 20 kernel_size: 5 {filler} }}',
         (n, 1, 28, 28), False),
        ("pool1", 'name: "pool1" type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 }',
         (n, 20, 24, 24), True),
        ("conv2", f'name: "conv2" type: "Convolution" convolution_param {{ num_output: 50 kernel_size: 5 {filler} }}',
         (n, 20, 12, 12), True),
        ("pool2", 'name: "pool2" type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 }',
         (n, 50, 8, 8), True),
    ]
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                                      "OMP_NUM_THREADS") if k in os.environ}
    print(f"numpy {np.__version__}, batch {n}, float32, env {env or '{}'}")
    print(f"{'':<25}{'layer (ms)':^28}   {'its GEMMs':^18} {'one 2-D GEMM':^18}")
    print(f"{'layer':<7}{'shape':<18}{'forward':>9}{'backward':>10}{'total':>9}   "
          f"{'fwd':>9}{'bwd':>9} {'fwd':>9}{'bwd':>9}  layout")
    total_fb = 0.0
    for name, text, shape, need_dx in cases:
        layer, bottom, top = make(text, shape)
        fwd = timed(lambda: layer.forward(bottom, top), args.rounds)
        bwd = timed(lambda: layer.backward(top, [need_dx], bottom), args.rounds)
        total_fb += fwd + bwd
        floor, layout = "", ""
        if layer.type == "Convolution":
            g = layer.geom
            (gf, gb), (pf, pb) = gemm_floor(layer, need_dx, args.rounds)
            floor = f"{gf:9.2f}{gb:9.2f} {pf:9.2f}{pb:9.2f}"
            layout = "batch-inner (C, H*W*N)" if g.batch_inner else "stacked (N, C, H*W)"
        else:
            floor = " " * 37
        print(f"{name:<7}{'x'.join(map(str, shape)):<18}{fwd:9.2f}{bwd:10.2f}{fwd + bwd:9.2f}   {floor}  {layout}")
    print(f"{'sum':<25}{'':9}{'':10}{total_fb:9.2f}   (ms; conv1 backward skips the bottom gradient)")
    if args.lenet:
        total, rows = time_lenet(n, args.rounds)
        print(f"\nwhole LeNet (models/lenet/lenet_train_test.prototxt, Input instead of Data), batch {n}:")
        for name, f, b in rows:
            print(f"  {name:<10}{f:8.2f}{b:8.2f}")
        print(f"  forward+backward {total:.2f} ms (best pass; per-layer figures are per-layer bests)")


if __name__ == "__main__":
    main()
