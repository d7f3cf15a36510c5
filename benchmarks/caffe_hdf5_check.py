"""netspec's HDF5 files and HDF5Data/WindowData batches against BVLC Caffe's own, on this machine.

    .venv/bin/python benchmarks/caffe_hdf5_check.py [--caffe PATH] [--keep DIR]

Needs a `caffe` binary built with HDF5 and OpenCV (bench_caffe.py's docstring says how to get
Debian's). Not a test: the suite never needs Caffe. Each check prints one line:

1. HDF5Data with shuffle over 3 files: the first 60 rows (3 epochs, files and rows reshuffled),
   dumped by an HDF5Output layer in each tool, must be identical.
2. Caffe's .solverstate.h5 resumed by netspec and by Caffe: the same losses and final weights
   (to float rounding of the two BLAS builds).
3. netspec's .solverstate.h5 (its netspec_resume record removed, since Caffe cannot restore data
   positions) resumed by Caffe and by netspec: the same.
4. Both tools' snapshot files: the same datasets, shapes, types and string layout.
5. WindowData batches (PNG, warp/square, context_pad, mean file or values, scale): how many
   values differ from Caffe's, and by how much (pixels resized by cv::resize in Caffe).
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

import h5py
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETSPEC = [sys.executable, "-m", "netspec"]

MLP = """name: "h5mlp"
layer { name: "data" type: "HDF5Data" top: "data" top: "label" include { phase: TRAIN }
        hdf5_data_param { source: "train.txt" batch_size: 8 } }
layer { name: "data" type: "HDF5Data" top: "data" top: "label" include { phase: TEST }
        hdf5_data_param { source: "test.txt" batch_size: 10 } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 16 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""
SOLVER = """net: "net.prototxt"
test_iter: 2
test_interval: 10
base_lr: 0.05
momentum: 0.9
lr_policy: "step"
gamma: 0.5
stepsize: 15
display: 5
max_iter: 40
snapshot: 10
snapshot_prefix: "{prefix}"
snapshot_format: HDF5
solver_mode: CPU
random_seed: 7
"""


def run(command, log=None):
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(command)}\n{proc.stderr[-2000:]}")
    if log:
        with open(log, "w") as f:
            f.write(proc.stderr + proc.stdout)
    return proc.stderr + proc.stdout


def dump_batch(tool, model, name):
    """The first batch of a data layer, through an HDF5Output layer `o` writing OUT.h5."""
    with open(model) as f:
        text = f.read().replace("OUT.h5", f"{name}.h5")
    with open(f"{name}.prototxt", "w") as f:
        f.write(text)
    if tool == "caffe":
        run([CAFFE, "test", f"--model={name}.prototxt", "--weights=empty.caffemodel", "--iterations=1"])
    else:
        run(NETSPEC + ["test", f"--model={name}.prototxt", "--weights=empty.caffemodel", "--iterations=1"])
    with h5py.File(f"{name}.h5", "r") as f:
        return f["data"][()], f["label"][()]


def check_order():
    for k, n in enumerate((7, 4, 9)):
        x = np.stack([np.full(n, k), np.arange(n)], axis=1).astype(np.float32)
        with h5py.File(f"f{k}.h5", "w") as f:
            f["data"], f["label"] = x, np.full(n, k, np.float32)
    with open("files.txt", "w") as f:
        f.write("f0.h5\nf1.h5\nf2.h5\n")
    with open("order.prototxt", "w") as f:
        f.write('layer { name: "d" type: "HDF5Data" top: "data" top: "label" '
                'hdf5_data_param { source: "files.txt" batch_size: 60 shuffle: true } }\n'
                'layer { name: "o" type: "HDF5Output" bottom: "data" bottom: "label" '
                'hdf5_output_param { file_name: "OUT.h5" } }\n')
    theirs, ours = dump_batch("caffe", "order.prototxt", "caffe_order"), dump_batch("netspec", "order.prototxt", "ns_order")
    same = all(np.array_equal(a, b) for a, b in zip(theirs, ours))
    print(f"1. HDF5Data shuffled order, 60 rows of 3 files: {'identical' if same else 'DIFFERENT'}")


def losses(log):
    return re.findall(r"Iteration (\d+) \(.*\), loss = (\S+)", log)


def weights(path):
    with h5py.File(path, "r") as f:
        return {f"{layer}/{j}": f[f"data/{layer}/{j}"][()] for layer in f["data"] for j in f[f"data/{layer}"]}


def compare_runs(label, caffe_log, ns_log, caffe_model, ns_model):
    a, b = weights(caffe_model), weights(ns_model)
    diff = max(float(np.abs(a[k] - b[k]).max()) for k in a) if sorted(a) == sorted(b) else float("inf")
    theirs, ours = losses(caffe_log), losses(ns_log)
    if [i for i, _ in theirs] != [i for i, _ in ours]:
        print(f"{label}: DIFFERENT iterations displayed: {theirs} vs {ours}")
        return
    rel = max(abs(float(a) - float(b)) / abs(float(a)) for (_, a), (_, b) in zip(theirs, ours))
    print(f"{label}: {len(ours)} displayed losses, max relative diff {rel:.2g} (6 digits printed); "
          f"final weights max |diff| {diff:.3g}")


def check_snapshots():
    g = np.random.default_rng(3)
    for name, n in (("train", 60), ("test", 20)):
        x = g.standard_normal((n, 6)).astype(np.float32)
        with h5py.File(f"{name}.h5", "w") as f:
            f["data"], f["label"] = x, (x[:, 0] > 0).astype(np.float32) + (x[:, 1] > 1)
        with open(f"{name}.txt", "w") as f:
            f.write(f"{name}.h5\n")
    with open("net.prototxt", "w") as f:
        f.write(MLP)
    for tag in ("c", "c_from_c", "n_from_c", "c_from_n", "n_from_n"):
        os.makedirs(tag, exist_ok=True)
        with open(f"{tag}.prototxt", "w") as f:
            f.write(SOLVER.format(prefix=f"{tag}/m"))
    run([CAFFE, "train", "--solver=c.prototxt"])
    c_log = run([CAFFE, "train", "--solver=c_from_c.prototxt", "--snapshot=c/m_iter_20.solverstate.h5"])
    n_log = run(NETSPEC + ["train", "--solver=n_from_c.prototxt", "--snapshot=c/m_iter_20.solverstate.h5"])
    compare_runs("2. Caffe's iter-20 .solverstate.h5 resumed by Caffe / by netspec", c_log, n_log,
                 "c_from_c/m_iter_40.caffemodel.h5", "n_from_c/m_iter_40.caffemodel.h5")
    shutil.copy("n_from_c/m_iter_30.solverstate.h5", "plain.solverstate.h5")
    with h5py.File("plain.solverstate.h5", "a") as f:
        del f["netspec_resume"]
    c_log = run([CAFFE, "train", "--solver=c_from_n.prototxt", "--snapshot=plain.solverstate.h5"])
    n_log = run(NETSPEC + ["train", "--solver=n_from_n.prototxt", "--snapshot=plain.solverstate.h5"])
    compare_runs("3. netspec's iter-30 .solverstate.h5 resumed by Caffe / by netspec", c_log, n_log,
                 "c_from_n/m_iter_40.caffemodel.h5", "n_from_n/m_iter_40.caffemodel.h5")
    layouts = [(layout(f"c/m_iter_20.{kind}"), layout(f"n_from_c/m_iter_30.{kind}"))
               for kind in ("solverstate.h5", "caffemodel.h5")]
    same = all(a == {k: v for k, v in b.items() if k != "netspec_resume"} for a, b in layouts)
    print(f"4. snapshot layouts (datasets, shapes, types, string padding): {'identical' if same else 'DIFFERENT'}")


def layout(path):
    found = {}

    def visit(name, item):
        if isinstance(item, h5py.Dataset):
            t = item.id.get_type()
            kind = ("string", t.get_strpad(), t.get_cset()) if item.dtype.kind == "S" else item.dtype.str
            found[name] = (item.shape, kind, item.chunks)
        else:
            found[name] = "group"
    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return found


def check_window_data():
    from PIL import Image
    from netspec.proto import caffe_pb2
    g = np.random.default_rng(0)
    Image.fromarray(g.integers(0, 256, (75, 103, 3), np.uint8)).save("img.png")
    mean = caffe_pb2.BlobProto(num=1, channels=3, height=40, width=40)
    mean.data.extend(g.uniform(0, 255, 3 * 40 * 40).astype(np.float32))
    with open("mean.binaryproto", "wb") as f:
        f.write(mean.SerializeToString())
    with open("win.txt", "w") as f:
        f.write("# 0\nimg.png\n3\n75\n103\n2\n3 0.9 10 7 60 50\n0 0.1 70 30 102 74\n")
    for mode, pad, use_mean_file in (("warp", 0, False), ("warp", 5, True), ("square", 5, False), ("square", 0, True)):
        mean_line = 'mean_file: "mean.binaryproto"' if use_mean_file else "mean_value: 100 mean_value: 110 mean_value: 120"
        with open("window.prototxt", "w") as f:
            f.write(f'layer {{ name: "w" type: "WindowData" top: "data" top: "label" transform_param {{ crop_size: 31 '
                    f'{mean_line} }} window_data_param {{ source: "win.txt" batch_size: 4 fg_fraction: 0.5 '
                    f'context_pad: {pad} crop_mode: "{mode}" scale: 0.5 }} }}\n'
                    'layer { name: "o" type: "HDF5Output" bottom: "data" bottom: "label" '
                    'hdf5_output_param { file_name: "OUT.h5" } }\n')
        (a, la), (b, lb) = dump_batch("caffe", "window.prototxt", "caffe_w"), dump_batch("netspec", "window.prototxt", "ns_w")
        print(f"5. WindowData {mode} context_pad {pad} {'mean_file' if use_mean_file else 'mean_value'}: labels "
              f"{'equal' if np.array_equal(la, lb) else 'DIFFER'}, {int((a != b).sum())} of {a.size} values differ, "
              f"max |diff| {float(np.abs(a - b).max()):g} (scale 0.5: one grey level is 0.5)")


def main():
    global CAFFE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--caffe", default=shutil.which("caffe"))
    parser.add_argument("--keep", help="work in this folder and keep it")
    args = parser.parse_args()
    if not args.caffe:
        sys.exit("no `caffe` binary on PATH (see benchmarks/bench_caffe.py for Debian's)")
    CAFFE = args.caffe
    work = args.keep or tempfile.mkdtemp(prefix="caffe-hdf5-")
    os.makedirs(work, exist_ok=True)
    os.environ["PYTHONPATH"] = REPO + os.pathsep + os.environ.get("PYTHONPATH", "")
    sys.path.insert(0, REPO)
    os.chdir(work)
    open("empty.caffemodel", "wb").close()          # an empty NetParameter: the dump nets have no params
    check_order()
    check_snapshots()
    check_window_data()
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
