"""The Data layer's share of a training iteration, and convert_imageset's records per second.

    .venv/bin/python benchmarks/bench_data.py [--images 256] [--iters 3] [--cores 1,2]
    .venv/bin/python benchmarks/bench_data.py --lenet [--iters 300] [--batches 300]

Default (issue 14): an ImageNet-style folder of photo-like JPEGs (500x375) goes through
`convert_imageset --resize_height=256 --resize_width=256 --encoded` (and once without --encoded,
for raw records) into an LMDB of 256x256 JPEGs; then CaffeNet (models/caffenet/deploy.prototxt
with a Data layer: batch 32, crop 227, mirror, mean values; SoftmaxWithLoss on fc8) trains from
it in a child process restricted to 1 core, then 2 (affinity, and OPENBLAS/OMP threads). Per
core count it prints:
  iteration one solver iteration (forward, backward, update);
  prepare   reading, decoding (the layer's decode threads), cropping, mirroring and mean
            subtraction of one batch, timed in the main thread with the prefetch thread stopped:
            the CPU work data costs per iteration, whether or not it overlaps the training;
  wait      the Data layer's forward during training (waiting for the prefetched batch and
            copying it), the only data cost on the training path.
Shares are against the iteration; prepare's share is the figure to keep under 10%.

--lenet (issue 3): the same three figures for LeNet's MNIST LMDB (`netspec get_mnist --lmdb`).
On a shared machine every figure is noisy: compare ratios within one run.
"""
import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

BATCH, CROP, SIZE = 32, 227, 256
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def photo_jpegs(folder, count, h=375, w=500):
    """`count` smooth, noisy 500x375 JPEGs (quality 90) in class folders, and their list file."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w]
    lines = []
    for i in range(count):
        phase = rng.uniform(0, 6, 3)
        planes = [np.sin(x / (9 + 4 * c) + y / (13 + 3 * c) + phase[c]) for c in range(3)]
        rgb = np.clip(np.stack(planes, -1) * 90 + 128 + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        name = f"n{i % 10:08d}/img_{i:05d}.JPEG"
        os.makedirs(os.path.join(folder, os.path.dirname(name)), exist_ok=True)
        Image.fromarray(rgb).save(os.path.join(folder, name), "JPEG", quality=90)
        lines.append(f"{name} {i % 1000}\n")
    listfile = os.path.join(folder, "train.txt")
    with open(listfile, "w") as f:
        f.writelines(lines)
    return listfile


def time_convert(folder, listfile, db, **flags):
    """(records per second, CPU ms per record: every thread of the process, unaffected by others' load)."""
    from netspec.datasets.imageset import convert_imageset
    start, cpu = time.perf_counter(), time.process_time()
    count, _ = convert_imageset(folder + "/", listfile, db, resize_height=SIZE, resize_width=SIZE,
                                show_progress=False, **flags)
    return count / (time.perf_counter() - start), (time.process_time() - cpu) * 1e3 / count


def caffenet_solver(source):
    from netspec.proto import caffe_pb2
    from netspec.schema import read_net
    from bench_models import _solver_for
    from time_models import fill_net
    deploy = read_net(os.path.join(REPO, "models", "caffenet", "deploy.prototxt"))
    net = caffe_pb2.NetParameter(name="CaffeNet")
    data = net.layer.add(name="data", type="Data", top=["data", "label"])
    data.data_param.source, data.data_param.batch_size = source, BATCH
    data.data_param.backend = caffe_pb2.DataParameter.LMDB
    data.transform_param.crop_size, data.transform_param.mirror = CROP, True
    data.transform_param.mean_value.extend([104, 117, 123])
    for layer in deploy.layer[1:]:
        if layer.type == "Softmax":
            net.layer.add(name="loss", type="SoftmaxWithLoss", bottom=[layer.bottom[0], "label"], top=["loss"])
        else:
            net.layer.add().CopyFrom(layer)
    solver = _solver_for(net, "bench_data")
    solver.param.base_lr = 1e-5                 # random weights: keep the loss finite over a few steps
    fill_net(solver.net)
    return solver


def measure(solver, iters, batches):
    """(iteration s, prepare s, wait s, prepare CPU s) for the solver's Data layer."""
    data = next(layer for layer in solver.net.layers if layer.type == "Data")
    waits, forward = [], data.forward

    def timed_forward(bottom, top):
        start = time.perf_counter()
        forward(bottom, top)
        waits.append(time.perf_counter() - start)

    data.forward = timed_forward
    solver.step(max(1, iters // 10))            # warm-up: buffers, BLAS threads, page cache, decoders
    waits.clear()
    start = time.perf_counter()
    solver.step(iters)
    iteration = (time.perf_counter() - start) / iters
    wait = sum(waits) / len(waits)
    data._prefetcher.stop()
    data._next_batch()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        data._next_batch()
    return iteration, (time.perf_counter() - start) / batches, wait, (time.process_time() - cpu) / batches


def child(args):
    """One core count: affinity first, so that every thread (BLAS, decoders) is bound to it."""
    cores = sorted(os.sched_getaffinity(0))[:args.child]
    os.sched_setaffinity(0, cores)
    from netspec import glog
    from netspec.datasets.images import decode_threads
    glog.configure(level=logging.WARNING)
    solver = caffenet_solver(args.db)
    iteration, prepare, wait, prepare_cpu = measure(solver, args.iters, args.batches)
    solver.net.close()
    print(f"{len(cores)} core{'s' if len(cores) > 1 else ''} ({decode_threads()} decode thread"
          f"{'s' if decode_threads() > 1 else ''}): iteration {iteration * 1e3:8.1f} ms | prepare "
          f"{prepare * 1e3:6.1f} ms ({100 * prepare / iteration:4.1f}%; CPU {prepare_cpu * 1e3:.0f} ms) | wait {wait * 1e3:6.2f} ms "
          f"({100 * wait / iteration:4.2f}%) | BLAS {blas_line()}", flush=True)


def blas_line():
    try:
        from threadpoolctl import threadpool_info
        return "; ".join(f"{i['internal_api']} {i.get('version')} {i.get('architecture')} "
                         f"({i['num_threads']} threads)" for i in threadpool_info())
    except ImportError:
        import numpy as np
        try:
            blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
            return f"{blas.get('name')} {blas.get('version', '')} (threadpoolctl not installed: kernel unknown)"
        except (TypeError, KeyError, AttributeError):
            return "unknown"


def caffenet(args):
    from netspec import glog
    from netspec.datasets.images import decode_threads
    from PIL import features
    glog.configure(level=logging.WARNING)
    print(f"machine: {os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          "(shared with other work: figures are noisy)")
    print(f"Pillow JPEG: libjpeg-turbo {features.version('libjpeg_turbo')}")
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        folder = os.path.join(tmp, "images")
        listfile = photo_jpegs(folder, args.images)
        db = os.path.join(tmp, "train_lmdb")
        encoded, encoded_cpu = time_convert(folder, listfile, db, encoded=True)
        raw, raw_cpu = time_convert(folder, listfile, os.path.join(tmp, "raw_lmdb"))
        print(f"convert_imageset, {args.images} JPEGs 500x375 -> 256x256 ({decode_threads()} threads): "
              f"{encoded:6.1f} records/s with --encoded (decode, resize, re-encode; {encoded_cpu:.1f} ms CPU each), "
              f"{raw:6.1f} records/s raw (decode, resize; {raw_cpu:.1f} ms CPU each)")
        print(f"CaffeNet train net, batch {BATCH}, {SIZE}x{SIZE} JPEG Datums, crop {CROP}, mirror, "
              f"{args.iters} iterations, {args.batches} batches prepared")
        env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
        for cores in args.cores:
            env.update({var: str(cores) for var in THREAD_VARS})
            cmd = [sys.executable, __file__, "--child", str(cores), "--db", db, "--iters", str(args.iters),
                   "--batches", str(args.batches)]
            subprocess.run(cmd, env=env, check=True, cwd=REPO)


def lenet(args):
    from netspec import glog
    from netspec.solver import Solver
    os.chdir(REPO)
    glog.configure(level=logging.WARNING)
    solver = Solver("solvers/lenet_solver.prototxt")
    iteration, prepare, wait, _ = measure(solver, args.iters, args.batches)
    print(f"LeNet train net, batch 64, {args.iters} iterations, {args.batches} batches prepared")
    print(f"  iteration  {iteration * 1e3:8.3f} ms")
    print(f"  prepare    {prepare * 1e3:8.3f} ms  ({100 * prepare / iteration:4.1f}% of an iteration, "
          "in the prefetch thread)")
    print(f"  wait       {wait * 1e3:8.3f} ms  ({100 * wait / iteration:4.1f}% of an iteration, "
          "on the training path)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lenet", action="store_true", help="LeNet on the MNIST LMDB instead")
    parser.add_argument("--images", type=int, default=256, help="JPEGs generated and converted")
    parser.add_argument("--iters", type=int, default=None, help="training iterations timed")
    parser.add_argument("--batches", type=int, default=None, help="batches prepared in the main thread")
    parser.add_argument("--cores", type=lambda s: [int(c) for c in s.split(",")], default=[1, 2])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    if args.lenet:
        args.iters, args.batches = args.iters or 300, args.batches or 300
        return lenet(args)
    args.iters, args.batches = args.iters or 3, args.batches or 8
    return child(args) if args.child else caffenet(args)


if __name__ == "__main__":
    main()
