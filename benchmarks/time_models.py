"""Time every shipped deploy net as `netspec time --phase TEST` does and write benchmarks/model_times.md.

    .venv/bin/python benchmarks/time_models.py [--iterations 5] [--batch 10] [--out benchmarks/model_times.md]

Each net's Input batch is set to --batch (the shapes are otherwise the shipped file's), its inputs
are filled with uniform noise and its weights with N(0, 1/fan_in) draws (BatchNorm and Scale as
identities), so that no value overflows: the deploy files name no fillers, and all-zero weights
would send BatchNorm's division to inf. netspec.timing.time_net runs one warm-up forward, then
--iterations timed forwards; TEST phase, so no backward, as in `caffe time --phase TEST`.
"""
import argparse
import datetime
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from netspec import glog  # noqa: E402
from netspec.net import Net  # noqa: E402
from netspec.proto import caffe_pb2  # noqa: E402
from netspec.schema import read_net  # noqa: E402
from netspec.timing import describe_machine, time_net  # noqa: E402

MODELS = [
    "models/lenet/lenet.prototxt",
    "models/cifar10/cifar10_quick.prototxt",
    "models/cifar10/cifar10_full.prototxt",
    "models/mnist_siamese/mnist_siamese.prototxt",
    "models/caffenet/deploy.prototxt",
    "models/googlenet/deploy.prototxt",
    "models/resnet50/ResNet-50-deploy.prototxt",
    "models/squeezenet/squeezenet_v1.1_deploy.prototxt",
    "models/mobilenet/mobilenet_deploy.prototxt",
]


def set_input_batch(param, batch):
    """Give every Input layer of a NetParameter a leading (batch) dimension of `batch`."""
    for layer in param.layer:
        if layer.type == "Input":
            for shape in layer.input_param.shape:
                shape.dim[0] = batch


def fill_net(net, seed=0):
    """Weights N(0, 1/fan_in), biases 0, BatchNorm and Scale as identities, Input blobs U(0, 1).

    The deploy files name no fillers, and their all-zero blobs would send BatchNorm's division to
    inf; these draws keep every activation finite whatever the depth. Shared with bench_models.py.
    """
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        for j, blob in enumerate(layer.blobs):
            if layer.type in ("BatchNorm", "Scale"):
                # BatchNorm (mean, variance, factor) = (0, 1, 1); Scale (gamma, beta) = (1, 0).
                blob.data[...] = float((j > 0) if layer.type == "BatchNorm" else (j == 0))
            elif blob.data.ndim >= 2:
                blob.data[...] = rng.standard_normal(blob.shape) / np.sqrt(blob.count // blob.shape[0])
            else:
                blob.data[...] = 0
    for name in net.inputs:
        net.blobs[name].data[...] = rng.uniform(0, 1, net.blobs[name].shape)
    return net


def build(model, batch):
    param = read_net(os.path.join(REPO, model))
    set_input_batch(param, batch)
    return fill_net(Net(param, caffe_pb2.TEST))


def time_model(model, batch, iterations):
    start = time.perf_counter()
    net = build(model, batch)
    built = time.perf_counter() - start
    result = time_net(net, iterations, backward=False)
    result.update(model=model, name=net.name, build_s=built, layers_count=len(net.layers),
                  input_shape=net.blobs[net.inputs[0]].shape)
    return result


def markdown(results, batch, iterations, seconds):
    lines = [
        "# Model timings",
        "",
        f"Written by `benchmarks/time_models.py --batch {batch} --iterations {iterations}` on "
        f"{datetime.date.today().isoformat()} ({seconds:.0f} s in all). Each figure is the mean over "
        f"{iterations} forward passes after one warm-up pass, TEST phase (forward only, as "
        "`netspec time --phase TEST` / `caffe time --phase TEST`), batch "
        f"{batch} for every net. The machine was shared with other jobs, so treat the figures as rough.",
        "",
    ]
    lines += [f"- {line}" for line in describe_machine()]
    lines += ["", "## Totals", "", "| model | net | input | layers | forward ms / batch | ms / image | build s |",
              "|---|---|---|---:|---:|---:|---:|"]
    for r in results:
        shape = "x".join(map(str, r["input_shape"]))
        lines.append(f"| {r['model']} | {r['name']} | {shape} | {r['layers_count']} | {r['forward_ms']:.1f} | "
                     f"{r['forward_ms'] / batch:.2f} | {r['build_s']:.2f} |")
    for r in results:
        total = r["forward_ms"] or 1.0
        lines += ["", f"## {r['name']} ({r['model']})", "",
                  f"Forward {r['forward_ms']:.1f} ms per batch of {batch}.", "",
                  "| layer | forward ms | share |", "|---|---:|---:|"]
        for name, fwd, _ in r["layers"]:
            lines.append(f"| {name} | {fwd:.3f} | {100 * fwd / total:.1f}% |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "model_times.md"))
    parser.add_argument("models", nargs="*", help="models to time (default: every shipped deploy net)")
    args = parser.parse_args(argv)
    glog.configure(open(os.devnull, "w"))
    start = time.perf_counter()
    results = []
    for model in args.models or MODELS:
        r = time_model(model, args.batch, args.iterations)
        print(f"{model}: {r['forward_ms']:.1f} ms per batch of {args.batch}", flush=True)
        results.append(r)
    with open(args.out, "w") as f:
        f.write(markdown(results, args.batch, args.iterations, time.perf_counter() - start))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
