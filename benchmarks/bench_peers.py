"""netspec against the CPU runners people use: ONNX Runtime, OpenCV dnn, BVLC Caffe and PyTorch.

Install the peers in a separate venv (never netspec's dependencies), then run from the checkout:

    python3 -m venv /work/benchvenv
    /work/benchvenv/bin/pip install -e . onnx onnxruntime "opencv-python-headless<5" threadpoolctl torch==2.13.0
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE /work/benchvenv/bin/python benchmarks/bench_peers.py \\
        --out benchmarks/peer_bench.md --json /tmp/peer_bench.json   # everything (see peer_bench.md for the time)
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE /work/benchvenv/bin/python benchmarks/bench_peers.py --quick
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE /work/benchvenv/bin/python benchmarks/bench_peers.py \\
        --profile --out /tmp/profile.md           # per-layer-type netspec vs ONNX Runtime's profiler

(torch from PyPI pulls CUDA wheels; a CPU-only wheel, torch-2.13.0+cpu, is the same code.) Any
subset of the peers may be installed: a missing one gets a line saying so. Caffe is used when a
`caffe` binary is on PATH (--caffe): benchmarks/bench_caffe.py says how to get Debian's.

What is timed, per net (LeNet at batch 64, the five deploy nets of bench_models.DEPLOY at batch
1 and 10), and how:
- Forward, TEST phase: one net, one set of weights (time_models.fill_net's random draws), one
  input. netspec writes the .caffemodel OpenCV reads (cv2.dnn.readNetFromCaffe on the same
  prototxt) and the ONNX file ONNX Runtime runs (netspec's own exporter). Each peer's output (and
  the pre-Softmax scores) must match netspec's (max |diff| / max |netspec| < --tolerance) before
  it is timed; a peer that differs is reported and not timed. Caffe's binary cannot be fed an
  input, so its rows are marked unchecked (`caffe time` does not read weights; its time does not
  depend on them).
- Training iteration (clear diffs, forward, backward, SGD update with momentum and weight decay),
  batch 10, LeNet 64: netspec as bench_models.bench_net does it (LeNet from a Data layer over a
  small random LMDB, since MNIST's content does not change the time), against PyTorch on
  peer_torch.build_module(net), a torch model built from netspec's own layer list with its
  weights, checked equal in eval mode before timing.
- Threads 1 and 2: netspec gets NETSPEC_THREADS and OPENBLAS/OMP_NUM_THREADS, ONNX Runtime
  intra_op_num_threads, OpenCV cv2.setNumThreads, torch set_num_threads. "default" sets nothing.
- Every runner and configuration lives in its own process (its peak RSS, VmHWM, is its own),
  kept alive across rounds: round r times each runner in turn (A B C A B C ...), so the machine's
  drift hits all of them alike; figures are medians over all rounds' samples, and ratios
  netspec / peer come from the same run.
- Contention: the default settings, timed alternately without and with one competing busy
  process (a Python spin loop); slowdown = busy median / quiet median.
- Floors (bench_models.floors), timed in netspec's process after its rounds, the BLAS at the
  row's thread count, each product np.matmul alone on float32 operands (best_ms's rule: a warm-up
  call, then the best of 2 samples of enough calls to fill 2 ms, over 3 sweeps of all shapes):
  - GEMM floor: the im2col GEMM of every Convolution (W (M/G x C/G*kh*kw) by the columns
    (C/G*kh*kw x N*Ho*Wo), per group) and the GEMM of every InnerProduct, as Caffe runs them
    (forward; forward + backward for training). Depthwise layers count as C stacked (1 x 9)
    products, which numpy runs far below BLAS speed.
  - Algorithm floor (forward table): the products of the engine netspec picks for each layer
    (layer.engine after net.reshape()). WinogradConv: F(2x2, 3x3)'s 16 x G products of the
    transformed weights U (M/G x C/G) by the transformed tiles V (C/G x tiles) on the layer's
    real tile count N x ceil(Ho/2) x ceil(Wo/2), as one product per point and group where netspec
    runs blocks of up to 128 tiles. DepthwiseConv: no GEMM; its direct kernel (netspec's forward
    of each such layer alone, on fresh blobs, at netspec's threads, same rule) is reported as
    "direct depthwise ms" beside the floor, not in it, since it times netspec's own kernel and
    bounds nothing. Every other engine (stacked, pointwise, column layouts) and InnerProduct: the
    im2col products, as in the GEMM floor. Neither floor counts biases, im2col, the Winograd input
    and output transforms, or other layers; the Winograd weight transform netspec redoes on every
    forward (its compiled G g G^T of each of the M*C/G kernels) is timed and reported under the
    table, outside both floors.
- --profile: per layer type, netspec's per-layer forward times (netspec.timing.time_net, as
  `netspec time --phase TEST` prints them) against ONNX Runtime's own profiler
  (SessionOptions.enable_profiling), whose node names start with the Caffe layer's name.

Absolute times on a shared machine drift 2x; read the ratios, and run on a quiet machine for
figures to quote.
"""
import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from bench_models import DEPLOY, LENET  # noqa: E402

LENET_DEPLOY = "models/lenet/lenet.prototxt"
NETS = {"lenet": LENET_DEPLOY, "caffenet": DEPLOY[0], "googlenet": DEPLOY[1], "resnet50": DEPLOY[2],
        "squeezenet": DEPLOY[3], "mobilenet": DEPLOY[4]}
LENET_BATCH = 64
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NETSPEC_THREADS")
INFER_PEERS = ("ort", "opencv", "caffe")
LABEL = {"netspec": "netspec", "ort": "ONNX Runtime", "opencv": "OpenCV dnn", "caffe": "Caffe",
         "torch": "PyTorch", "netspec-train": "netspec"}
TAG = "@@"                     # a worker's reply lines start with this (libraries may print too)


# ------------------------------------------------------------------ pure helpers (tested)
def relative_difference(got, want):
    """max |got - want| / max |want| (the measure of netspec's ONNX check, netspec/onnx_export/check.py),
    in numpy alone so that a peer's process does not import netspec and its peak RSS stays its own."""
    import numpy as np
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf")
    if not want.size:
        return 0.0
    diff = np.abs(got - want)
    if np.isnan(diff).any():
        return float("inf")
    scale = np.abs(want).max()
    return float(diff.max() / scale) if scale > 0 else float(diff.max())


def median_ratio(a, b):
    """median(a) / median(b), or None when either is empty."""
    if not a or not b:
        return None
    return statistics.median(a) / statistics.median(b)


def thread_env(base, threads):
    """The environment for a worker: thread variables set to `threads`, or all removed (None = default)."""
    env = {k: v for k, v in base.items() if k not in THREAD_VARS}
    if threads:
        for var in THREAD_VARS:
            env[var] = str(threads)
    return env


REORDER = "(ORT layout reorder)"


def layer_of_node(node_name, layers=(), producers=None):
    """The Caffe layer an ONNX Runtime profile node came from. netspec names nodes `<layer>:<op>`;
    ORT's rewrites rename some: `fused <node>` (Gemm+ReLU), `<value>_nchwc` (its blocked-layout
    convolutions and pools, named after their output value, which is a Caffe blob or
    `<blob>/<layer>`), and its own ReorderInput/ReorderOutput layout conversions (REORDER)."""
    name = node_name[: -len("_kernel_time")] if node_name.endswith("_kernel_time") else node_name
    if name.startswith("fused "):
        name = name[len("fused "):]
    if name.startswith(("ReorderInput", "ReorderOutput")):
        return REORDER
    if ":" in name:
        return name.split(":", 1)[0]
    for suffix in ("_nchwc",):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    if name in layers:
        return name
    head, _, tail = name.rpartition("/")
    if head and tail in layers:
        return tail
    return (producers or {}).get(name, name)


def ort_profile_by_layer(events, layers=(), producers=None):
    """({layer: microseconds}, {layer: ORT op}) summed over the kernel-time events of ONNX Runtime's
    profile JSON."""
    out, ops, longest = {}, {}, {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        layer, dur = layer_of_node(e["name"], layers, producers), float(e.get("dur", 0))
        out[layer] = out.get(layer, 0.0) + dur
        if dur >= longest.get(layer, -1.0):        # name the op that takes the layer's time
            longest[layer] = dur
            ops[layer] = (e.get("args") or {}).get("op_name")
    return out, ops


def by_type(times, types):
    """{layer type: total} from {layer: time} and {layer: type}; unknown layers under '?'."""
    out = {}
    for layer, t in times.items():
        kind = types.get(layer, "?")
        out[kind] = out.get(kind, 0.0) + t
    return out


# ------------------------------------------------------------------ preparing the files
def prepare(key, batch, root, want_onnx, logits=True):
    """Write the net of `key` at `batch` into `root`: prototxt, .caffemodel, .onnx (when onnx is
    installed), input and netspec's reference outputs (.npy). Returns a description dict."""
    import numpy as np
    from netspec import glog
    from netspec.net import Net
    from netspec.proto import caffe_pb2
    from netspec.schema import read_net, write_text_message
    from time_models import fill_net, set_input_batch
    glog.configure(open(os.devnull, "w"))
    os.makedirs(root, exist_ok=True)
    param = read_net(os.path.join(REPO, NETS[key]))
    set_input_batch(param, batch)
    proto = os.path.join(root, "net.prototxt")
    write_text_message(proto, param)
    net = fill_net(Net(param, caffe_pb2.TEST))
    inputs = {n: net.blobs[n].data.copy() for n in net.inputs}
    net.forward_prefilled()
    outputs = list(net.outputs)
    # The scores before a final Softmax are checked too: random weights make the probabilities
    # nearly uniform, where a wrong net could still look close.
    last = net.records[-1]
    if logits and last.layer.type == "Softmax" and last.bottom_names[0] not in net.inputs:
        outputs.append(last.bottom_names[0])
    # Files by position: blob names may hold '/'.
    for i, array in enumerate(inputs.values()):
        np.save(os.path.join(root, f"in_{i}.npy"), array)
    for i, n in enumerate(outputs):
        np.save(os.path.join(root, f"out_{i}.npy"), net.blobs[n].data)
    net.save(os.path.join(root, "net.caffemodel"))
    desc = {"key": key, "batch": batch, "dir": root, "inputs": list(inputs), "outputs": outputs,
            "name": net.name, "onnx": None, "types": {r.name: r.layer.type for r in net.records},
            "producers": _producers(net)}
    if want_onnx:
        from netspec.onnx_export import export_onnx
        path = os.path.join(root, "net.onnx")
        try:
            model = export_onnx(net)
            import onnx
            have = {o.name for o in model.graph.output}
            for n in outputs:          # the pre-Softmax scores as an extra output, for the check
                if n not in have:
                    model.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
            onnx.save(model, path)
            desc["onnx"] = path
        except Exception as e:       # reported per net, the other peers still run
            desc["onnx_error"] = " ".join(str(e).split())
    with open(os.path.join(root, "desc.json"), "w") as f:
        json.dump(desc, f)
    return desc


def _producers(net):
    """{blob: the first layer that writes it} (in-place layers rewrite a blob; its producer made it)."""
    out = {}
    for r in net.records:
        for t in r.top_names:
            out.setdefault(t, r.name)
    return out


def make_lenet_lmdb(root, count=256):
    """A random MNIST-shaped LMDB at root/data/mnist/mnist_train_lmdb (and _test_): LeNet's Data
    layer reads it as it reads MNIST, and the images' content does not change the time."""
    import numpy as np
    from netspec.datasets.lmdb_io import array_to_datum, write_lmdb_atomically
    rng = np.random.default_rng(0)
    for name in ("mnist_train_lmdb", "mnist_test_lmdb"):
        path = os.path.join(root, "data", "mnist", name)
        if os.path.exists(path):
            continue
        images = rng.integers(0, 256, (count, 1, 28, 28), dtype=np.uint8)
        write_lmdb_atomically(path, ((f"{i:08d}", array_to_datum(x, i % 10).SerializeToString())
                                     for i, x in enumerate(images)))
    return root


# ------------------------------------------------------------------ workers (one per runner and config)
def _maxrss_mb():
    """This process's peak RSS in MB: VmHWM, which starts afresh at exec. (ru_maxrss does not on
    Linux: exec carries the forking parent's peak over, so every worker would report the parent's.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _load(desc):
    import numpy as np
    ins = {n: np.load(os.path.join(desc["dir"], f"in_{i}.npy")) for i, n in enumerate(desc["inputs"])}
    outs = {n: np.load(os.path.join(desc["dir"], f"out_{i}.npy")) for i, n in enumerate(desc["outputs"])}
    return ins, outs


def _netspec_threads(threads):
    # The thread count once netspec has one (NETSPEC_THREADS, set in the environment, is read too).
    try:
        import netspec
        if threads and hasattr(netspec, "set_threads"):
            netspec.set_threads(threads)
    except ImportError:
        pass


def _floor(net, threads):
    """bench_models' two floors of `net` (bench_models.floors: the GEMM floor and the algorithm
    floor) with the BLAS at `threads` threads (the cores when None): netspec holds its BLAS to one
    thread and threads the layers itself, but the floor is the machine's GEMM peak at that many
    cores. The direct depthwise layers run on netspec's own threads, as in its forward."""
    from bench_models import floors
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return floors(net)
    with threadpool_limits(limits=threads or len(os.sched_getaffinity(0)), user_api="blas"):
        return floors(net)


class NetspecInfer:
    def __init__(self, desc, threads):
        from netspec import glog
        from netspec.net import Net
        from netspec.proto import caffe_pb2
        glog.configure(open(os.devnull, "w"))
        _netspec_threads(threads)
        self.threads = threads
        # Inference as `netspec test` runs it: blobs no later layer reads share memory, except
        # those compared against the peers.
        self.net = Net(os.path.join(desc["dir"], "net.prototxt"), caffe_pb2.TEST, reuse_memory=True)
        self.net.copy_from(os.path.join(desc["dir"], "net.caffemodel"))
        self.ins, self.want = _load(desc)
        self.net.keep_blobs(self.want)

    def run(self):
        for n, a in self.ins.items():
            self.net.blobs[n].data[...] = a
        self.net.forward_prefilled()

    def outputs(self):
        return {n: self.net.blobs[n].data for n in self.want}

    def floor(self):
        return _floor(self.net, self.threads)


class OrtInfer:
    def __init__(self, desc, threads, profile=None):
        import onnxruntime as ort
        self.ins, self.want = _load(desc)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        if profile:
            opts.enable_profiling = True
            opts.profile_file_prefix = profile
        self.session = ort.InferenceSession(desc["onnx"], opts, providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]
        self.got = {}

    def run(self):
        self.got = dict(zip(self.names, self.session.run(None, self.ins)))

    def outputs(self):
        return {n: self.got[n] for n in self.want}


class OpencvInfer:
    def __init__(self, desc, threads):
        import cv2
        if threads:
            cv2.setNumThreads(threads)
        self.cv2 = cv2
        self.ins, self.want = _load(desc)
        self.net = cv2.dnn.readNetFromCaffe(os.path.join(desc["dir"], "net.prototxt"),
                                            os.path.join(desc["dir"], "net.caffemodel"))
        self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        self.net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        self.names = list(self.want)
        self.got = {}

    def run(self):
        for n, a in self.ins.items():
            self.net.setInput(a, n)
        self.got = dict(zip(self.names, self.net.forward(self.names)))

    def outputs(self):
        return self.got


class NetspecTrain:
    def __init__(self, desc, threads):
        import numpy as np
        from netspec import glog
        import bench_models
        glog.configure(open(os.devnull, "w"))
        _netspec_threads(threads)
        self.threads = threads
        model = LENET if desc["key"] == "lenet" else NETS[desc["key"]]
        self.solver, self.seeds = bench_models.build(model, desc["batch"], desc.get("data_root", REPO))
        self.net = self.solver.net
        self.np = np

    def run(self):
        net = self.net
        net.clear_param_diffs()
        net.forward_prefilled()
        for name, seed in self.seeds.items():
            net.blobs[name].diff[...] = seed
        net.backward_from_to()
        self.solver.apply_update()
        self.solver.iter += 1

    def outputs(self):
        return None                   # the training net is checked through the torch worker's eval forward

    def floor(self):
        return _floor(self.net, self.threads)


class TorchTrain:
    """PyTorch's step on the torch twin of the net; checked against netspec's TEST forward first."""

    def __init__(self, desc, threads):
        import numpy as np
        import torch
        from netspec import glog
        from netspec.net import Net
        from netspec.proto import caffe_pb2
        from peer_torch import build_module
        glog.configure(open(os.devnull, "w"))
        if threads:
            torch.set_num_threads(threads)
        torch.manual_seed(0)
        self.torch = torch
        ins, self.want = _load(desc)
        net = Net(os.path.join(desc["dir"], "net.prototxt"), caffe_pb2.TEST)
        net.copy_from(os.path.join(desc["dir"], "net.caffemodel"))
        self.model = build_module(net, torch)
        self.lenet = desc["key"] == "lenet"
        if self.lenet:       # LeNet trains on ip2's scores with a loss, as lenet_train_test does
            self.model.outputs = ["ip2", "prob"]
        del net
        self.model.eval()
        with torch.no_grad():
            out = self.model({n: torch.from_numpy(a) for n, a in ins.items()})
        self.checked = {n: out[n].numpy() for n in self.want if n in out}
        self.model.train()
        rng = np.random.default_rng(1)
        batch = desc["batch"]
        self.x = {n: torch.from_numpy(rng.uniform(0, 1, a.shape).astype(np.float32)) for n, a in ins.items()}
        self.labels = torch.from_numpy(rng.integers(0, 10, batch))
        out_name = self.model.outputs[0]
        self.seed = torch.from_numpy(rng.standard_normal(self.want[out_name].shape if out_name in self.want
                                                         else out[out_name].shape).astype(np.float32))
        # Caffe's SGD as bench_models runs it: momentum 0.9, weight decay 5e-4.
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=0.0005)

    def run(self):
        self.opt.zero_grad()
        out = self.model(self.x)
        if self.lenet:
            self.torch.nn.functional.cross_entropy(out["ip2"], self.labels).backward()
        else:
            out[self.model.outputs[0]].backward(self.seed)
        self.opt.step()

    def outputs(self):
        return self.checked


RUNNERS = {"netspec": NetspecInfer, "ort": OrtInfer, "opencv": OpencvInfer,
           "netspec-train": NetspecTrain, "torch": TorchTrain}


def _send(obj):
    sys.stdout.write(TAG + json.dumps(obj) + "\n")
    sys.stdout.flush()


def _blas_info():
    try:
        from threadpoolctl import threadpool_info
        return [{k: p.get(k) for k in ("internal_api", "version", "architecture", "num_threads", "prefix",
                                        "threading_layer")} for p in threadpool_info()]
    except ImportError:
        return []


def worker_main(spec):
    desc, runner, threads = spec["desc"], spec["runner"], spec["threads"]
    try:
        r = RUNNERS[runner](desc, threads)
        t = time.perf_counter()
        r.run()                            # the first run is the check's, and a warm-up
        first = time.perf_counter() - t
        got = r.outputs()
        diffs = None
        if got is not None:
            _, want = _load(desc)
            diffs = {n: relative_difference(got[n], want[n]) for n in want if n in got}
        r.run()                            # a second warm-up (allocators, thread pools)
    except Exception as e:
        _send({"error": f"{type(e).__name__}: {' '.join(str(e).split())}"[:400]})
        return
    _send({"ready": True, "diffs": diffs, "first_s": first, "blas": _blas_info()})
    peak = None                            # the runner's own peak, taken before the floor's matrices exist
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "time":
            times = []
            deadline = time.perf_counter() + cmd.get("min_s", 0.0)
            while len(times) < cmd["n"] or (time.perf_counter() < deadline and len(times) < 50):
                t = time.perf_counter()
                r.run()
                times.append((time.perf_counter() - t) * 1e3)
            _send({"times": times})
        elif cmd["op"] == "floor":
            peak = _maxrss_mb()
            _send(r.floor() if hasattr(r, "floor") else {})
        else:
            _send({"peak_rss_mb": peak or _maxrss_mb()})
            return


class Worker:
    """A runner in its own process, driven over stdin/stdout one command at a time."""

    def __init__(self, runner, desc, threads, python=sys.executable):
        self.runner, self.threads = runner, threads
        self.log = tempfile.TemporaryFile(mode="w+")
        spec = json.dumps({"runner": runner, "desc": desc, "threads": threads})
        self.proc = subprocess.Popen([python, os.path.abspath(__file__), "--worker", spec], cwd=REPO,
                                     env=thread_env(os.environ, threads), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.ready = self.recv()

    def recv(self):
        for line in self.proc.stdout:
            if line.startswith(TAG):
                return json.loads(line[len(TAG):])
        self.proc.wait()
        self.log.seek(0)
        tail = [s for s in self.log.read().strip().splitlines() if s.strip()][-1:] or [f"exit {self.proc.returncode}"]
        return {"error": tail[0][:400]}

    def ask(self, **cmd):
        try:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return {"error": "worker gone"}
        return self.recv()

    def close(self):
        r = self.ask(op="quit") if self.proc.poll() is None else {}
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        return r.get("peak_rss_mb")


# ------------------------------------------------------------------ peers present
def peers_present(caffe_binary):
    """{peer: version or None when missing}."""
    found = {}
    for peer, module in (("ort", "onnxruntime"), ("opencv", "cv2"), ("torch", "torch"), ("onnx", "onnx"),
                         ("threadpoolctl", "threadpoolctl")):
        try:
            found[peer] = __import__(module).__version__
        except ImportError:
            found[peer] = None
    found["caffe"] = caffe_binary if caffe_binary and shutil.which(caffe_binary) else None
    return found


def caffe_time_ms(caffe, desc, iterations, threads):
    """`caffe time --phase TEST` on the prepared prototxt: its average forward, ms."""
    import re
    env = thread_env(os.environ, threads)
    env["GLOG_minloglevel"] = "0"
    proc = subprocess.run([caffe, "time", f"-model={os.path.join(desc['dir'], 'net.prototxt')}",
                           f"-iterations={iterations}", "-phase=TEST"], capture_output=True, text=True, env=env)
    m = re.search(r"Average Forward pass: ([\d.]+) ms", proc.stdout + proc.stderr)
    return float(m.group(1)) if m else None


# ------------------------------------------------------------------ one comparison
def progress(msg):
    print(msg, file=sys.stderr, flush=True)


def interleaved(workers, rounds, iterations, min_s, busy=None, caffe=None):
    """{runner: [ms samples]} from `rounds` rounds over the ready workers (and Caffe's binary);
    with busy=(start, stop), each round times every runner quiet, then beside the busy process,
    under the keys runner and runner+'@busy'."""
    samples = {}
    phases = [False, True] if busy else [False]
    for k in range(rounds):
        # Each round starts with another runner, so that none always runs right after a start-up.
        order = workers[k % len(workers):] + workers[:k % len(workers)] if workers else []
        for loaded in phases:
            proc = busy[0]() if loaded else None
            try:
                for w in order:
                    key = w.runner + ("@busy" if loaded else "")
                    r = w.ask(op="time", n=iterations, min_s=min_s)
                    samples.setdefault(key, []).extend(r.get("times", []))
                if caffe:
                    ms = caffe_time_ms(caffe[0], caffe[1], iterations, caffe[2])
                    if ms is not None:
                        samples.setdefault("caffe" + ("@busy" if loaded else ""), []).append(ms)
            finally:
                if proc is not None:
                    busy[1](proc)
    return samples


def start_busy():
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.3)
    return proc


def stop_busy(proc):
    proc.terminate()
    proc.wait()


def start_workers(names, desc, threads, tolerance, python):
    """[ready Worker], {runner: status line} (why a runner is not timed, with its check)."""
    ready, status = [], {}
    for name in names:
        w = Worker(name, desc, threads, python)
        r = w.ready
        if "error" in r:
            status[name] = {"error": r["error"]}
            w.close()
            continue
        worst = max(r["diffs"].values()) if r["diffs"] else None
        status[name] = {"diff": worst, "diffs": r["diffs"], "blas": r.get("blas")}
        if worst is not None and not worst < tolerance:
            status[name]["refused"] = True
            w.close()
            continue
        ready.append(w)
    return ready, status


def run_config(names, desc, threads, args, floor=False, busy=False, caffe=None):
    """Start the workers, time them interleaved, take their floor and peak RSS; a result dict."""
    ready, status = start_workers(names, desc, threads, args.tolerance, args.python)
    for name, s in status.items():
        if s.get("error"):
            line = s["error"]
        else:
            line = "no output to check" if s.get("diff") is None else f"check {s['diff']:.1e}"
        progress(f"      {LABEL[name]}: {line}{' -> refused (output differs)' if s.get('refused') else ''}")
    result = {"threads": threads, "status": status, "samples": {}, "floor": None, "rss": {}}
    try:
        result["samples"] = interleaved(ready, args.rounds, args.iterations, args.min_seconds,
                                        (start_busy, stop_busy) if busy else None, caffe)
        if floor:
            ns = next((w for w in ready if w.runner.startswith("netspec")), None)
            if ns is not None:
                result["floor"] = ns.ask(op="floor")
    finally:
        for w in ready:
            result["rss"][w.runner] = w.close()
    for key, xs in sorted(result["samples"].items()):
        progress(f"      {key}: median {statistics.median(xs):.2f} ms over {len(xs)}")
    return result


# ------------------------------------------------------------------ tables
def _ms(samples, key):
    xs = samples.get(key)
    return statistics.median(xs) if xs else None


def _fmt(x, spec=".1f", none="—"):
    return none if x is None else format(x, spec)


def _cell(samples, status, key, ref):
    """'12.3 (0.81x)': the peer's median and netspec / peer, or why it has none."""
    s = status.get(key, {})
    if s.get("error"):
        return "error"
    if s.get("refused"):
        return f"differs ({s['diff']:.0e})"
    ms = _ms(samples, key)
    if ms is None:
        return "—"
    ratio = f" ({ref / ms:.2f}x)" if ref else ""
    return f"{ms:.1f}{ratio}"


def _ratio(a, b):
    return _fmt(a / b if a and b else None, ".2f") + "x"


def forward_table(rows):
    lines = ["| net | batch | threads | netspec ms | ONNX Runtime ms (netspec/ORT) | OpenCV ms (netspec/OpenCV) "
             "| Caffe ms (netspec/Caffe) | GEMM floor ms | netspec / floor | ORT / floor "
             "| algorithm floor ms | direct depthwise ms | netspec / alg. floor | ORT / alg. floor "
             "| check: ORT, OpenCV |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for key, batch, res in rows:
        smp, st = res["samples"], res["status"]
        ns = _ms(smp, "netspec")
        f = res.get("floor") or {}
        floor, alg = f.get("fwd_ms"), f.get("alg_fwd_ms")
        depthwise = f.get("depthwise_fwd_ms") if f.get("depthwise_layers") else None
        ort = _ms(smp, "ort")
        checks = ", ".join(_fmt(st.get(p, {}).get("diff"), ".0e") for p in ("ort", "opencv"))
        caffe = _cell(smp, st, "caffe", ns) + (" unchecked" if _ms(smp, "caffe") else "")
        lines.append(f"| {key} | {batch} | {res['threads']} | {_fmt(ns)} | {_cell(smp, st, 'ort', ns)} | "
                     f"{_cell(smp, st, 'opencv', ns)} | {caffe} | {_fmt(floor)} | {_ratio(ns, floor)} | "
                     f"{_ratio(ort, floor)} | {_fmt(alg)} | {_fmt(depthwise)} | {_ratio(ns, alg)} | "
                     f"{_ratio(ort, alg)} | {checks} |")
    return lines


FLOORS_TEXT = (
    "Both floors are np.matmul alone on float32 operands (bench_models.best_ms: after a warm-up call, the best "
    "of 2 samples of enough calls to fill 2 ms, over 3 sweeps of all shapes), the BLAS at the row's thread "
    "count, in netspec's process. GEMM floor: every Convolution's im2col "
    "GEMM (W (M/G x C/G*kh*kw) by columns (C/G*kh*kw x N*Ho*Wo), G groups) and every InnerProduct's "
    "GEMM, as Caffe runs them; MobileNet's depthwise layers count as C stacked (1 x 9) products. "
    "Algorithm floor: the products of the engine netspec picks for each layer (layer.engine after "
    "net.reshape()): a WinogradConv layer (3x3, stride 1) counts its F(2x2, 3x3) GEMMs, 16 x G "
    "products of U (M/G x C/G) by V (C/G x tiles), tiles = N x ceil(Ho/2) x ceil(Wo/2) (2.25x fewer "
    "operations); a DepthwiseConv layer counts no GEMM, and its direct kernel's time (netspec's own "
    "forward of the layer alone, at netspec's threads) is the 'direct depthwise' column, outside the "
    "floor: it measures netspec, it bounds nothing; every other layer counts its im2col GEMM as above. "
    "Neither floor counts bias, im2col, the Winograd input and output transforms, or any other layer.")


def floor_notes(rows):
    """The floors' definition and, per row, what lies outside them: the Winograd weight transforms
    (a GEMM netspec runs on every forward) and any layer whose engine bench_models does not model."""
    lines = [FLOORS_TEXT]
    transforms = [f"{k} {b}/{r['threads']}T {r['floor']['winograd_weights_ms']:.1f} ms "
                  f"({r['floor']['winograd_layers']} layers)" for k, b, r in rows
                  if (r.get("floor") or {}).get("winograd_layers")]
    if transforms:
        lines += ["", "Outside both floors, netspec's Winograd weight transform (its compiled G g G^T of the "
                  "M*C/G kernels of each layer, redone on every forward; a runner could keep U), timed the same "
                  "way in one thread: " + "; ".join(transforms)
                  + "."]
    unmodelled = sorted({n for _, _, r in rows for n in (r.get("floor") or {}).get("unmodelled", [])})
    if unmodelled:
        lines += ["", "Engines bench_models does not model (counted as im2col GEMMs in the algorithm floor): "
                  + ", ".join(unmodelled) + "."]
    return lines


def train_table(rows):
    lines = ["| net | batch | threads | netspec iter ms | PyTorch iter ms | netspec / PyTorch | GEMM floor ms "
             "| netspec / floor | check (torch eval vs netspec) |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for key, batch, res in rows:
        smp, st = res["samples"], res["status"]
        ns, tt = _ms(smp, "netspec-train"), _ms(smp, "torch")
        f = res.get("floor") or {}
        floor = f.get("fwd_ms", 0) + f.get("bwd_ms", 0) if "fwd_ms" in f else None
        tcell = _cell(smp, st, "torch", None)
        if st.get("netspec-train", {}).get("error"):
            ns_cell = "error: " + st["netspec-train"]["error"][:60]
        else:
            ns_cell = _fmt(ns)
        lines.append(f"| {key} | {batch} | {res['threads']} | {ns_cell} | {tcell} | "
                     f"{_fmt(ns / tt if ns and tt else None, '.2f')}x | {_fmt(floor)} | "
                     f"{_fmt(ns / floor if ns and floor else None, '.2f')}x | "
                     f"{_fmt(st.get('torch', {}).get('diff'), '.0e')} |")
    return lines


def scaling_table(forward_rows, train_rows):
    """1 thread / 2 threads for each runner where both were measured (the second core's gain)."""
    lines = ["| net | batch | what | netspec 1T/2T | ONNX Runtime 1T/2T | OpenCV 1T/2T | PyTorch 1T/2T |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for what, rows, runners in (("forward", forward_rows, ("netspec", "ort", "opencv", None)),
                                ("train", train_rows, ("netspec-train", None, None, "torch"))):
        by = {}
        for key, batch, res in rows:
            by.setdefault((key, batch), {})[res["threads"]] = res["samples"]
        for (key, batch), per in by.items():
            if 1 not in per or 2 not in per:
                continue
            cells = [_fmt(median_ratio(per[1].get(r), per[2].get(r)), ".2f") + "x" if r else "" for r in runners]
            lines.append(f"| {key} | {batch} | {what} | " + " | ".join(cells) + " |")
    return lines


def contention_table(rows):
    lines = ["| net | batch | runner | quiet ms | beside 1 busy process ms | slowdown |", "|---|---:|---|---:|---:|---:|"]
    for key, batch, res in rows:
        smp = res["samples"]
        for runner in ("netspec", "ort", "opencv"):
            q, b = _ms(smp, runner), _ms(smp, runner + "@busy")
            if q is None or b is None:
                continue
            lines.append(f"| {key} | {batch} | {LABEL[runner]} (default threads) | {q:.1f} | {b:.1f} | {b / q:.2f}x |")
    return lines


def rss_table(rows):
    lines = ["| net | batch | threads | netspec MB | ONNX Runtime MB | OpenCV MB | netspec / ORT |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for key, batch, res in rows:
        rss = res["rss"]
        ns, ort = rss.get("netspec"), rss.get("ort")
        lines.append(f"| {key} | {batch} | {res['threads']} | {_fmt(ns, '.0f')} | {_fmt(ort, '.0f')} | "
                     f"{_fmt(rss.get('opencv'), '.0f')} | {_fmt(ns / ort if ns and ort else None, '.2f')}x |")
    return lines


# ------------------------------------------------------------------ profile (netspec vs ORT, per layer type)
def profile_worker(spec):
    """Per-layer forward ms of one runner on a prepared net: netspec's time_net or ORT's profiler."""
    desc, runner, iterations = spec["desc"], spec["runner"], spec["iterations"]
    try:
        if runner == "netspec":
            from netspec.timing import time_net
            r = NetspecInfer(desc, spec["threads"])
            r.run()
            t = time_net(r.net, iterations, backward=False)
            layers = {name: f for name, f, _ in t["layers"]}
            _send({"layers": layers, "total_ms": t["forward_ms"]})
        else:
            prefix = os.path.join(desc["dir"], "ort_profile")
            r = OrtInfer(desc, spec["threads"], profile=prefix)
            r.run()
            t = time.perf_counter()
            for _ in range(iterations):
                r.run()
            total = (time.perf_counter() - t) * 1e3 / iterations
            path = r.session.end_profiling()
            with open(path) as f:
                events = json.load(f)
            os.unlink(path)
            # The profile holds the warm-up run too: scale its kernel time to one run.
            by_layer, ops = ort_profile_by_layer(events, desc["types"], desc["producers"])
            layers = {k: v / 1e3 / (iterations + 1) for k, v in by_layer.items()}
            _send({"layers": layers, "total_ms": total, "ops": ops})
    except Exception as e:
        _send({"error": f"{type(e).__name__}: {' '.join(str(e).split())}"[:400]})


def run_profile(desc, threads, iterations, python):
    out = {}
    for runner in ("netspec", "ort"):
        spec = json.dumps({"runner": runner, "desc": desc, "threads": threads, "iterations": iterations})
        proc = subprocess.run([python, os.path.abspath(__file__), "--profile-worker", spec], cwd=REPO,
                              env=thread_env(os.environ, threads), capture_output=True, text=True)
        lines = [s for s in proc.stdout.splitlines() if s.startswith(TAG)]
        out[runner] = json.loads(lines[-1][len(TAG):]) if lines else {
            "error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    return out


def profile_lines(key, desc, prof, top=8):
    ns, ort = prof["netspec"], prof["ort"]
    if "error" in ns or "error" in ort:
        return [f"### {key} batch {desc['batch']}: profile failed: {ns.get('error') or ort.get('error')}", ""]
    types = dict(desc["types"], **{REORDER: REORDER})
    nt, ot = by_type(ns["layers"], types), by_type(ort["layers"], types)
    lines = [f"### {key} (batch {desc['batch']}): netspec {ns['total_ms']:.1f} ms, ONNX Runtime "
             f"{ort['total_ms']:.1f} ms per forward ({ns['total_ms'] / ort['total_ms']:.2f}x)", "",
             "| Caffe layer type | netspec ms | ORT ms | gap ms | netspec / ORT |", "|---|---:|---:|---:|---:|"]
    for kind in sorted(set(nt) | set(ot), key=lambda k: -(nt.get(k, 0) - ot.get(k, 0))):
        a, b = nt.get(kind, 0.0), ot.get(kind, 0.0)
        if a < 0.05 and b < 0.05:
            continue
        lines.append(f"| {kind} | {a:.2f} | {b:.2f} | {a - b:+.2f} | {_fmt(a / b if b > 0.005 else None, '.1f')}x |")
    fused = ("Convolution", "ReLU", "BatchNorm", "Scale", "Eltwise")
    a, b = sum(nt.get(k, 0.0) for k in fused), sum(ot.get(k, 0.0) for k in fused)
    if b > 0:
        lines.append(f"| Convolution+ReLU+BatchNorm+Scale+Eltwise (ORT fuses these) | {a:.2f} | {b:.2f} | "
                     f"{a - b:+.2f} | {a / b:.1f}x |")
    gaps = sorted(ns["layers"], key=lambda n: -(ns["layers"][n] - ort["layers"].get(n, 0.0)))[:top]
    lines += ["", f"Top {top} layers by gap (ORT 0 = fused into its neighbour, e.g. Conv+ReLU, BN into Conv):", "",
              "| layer | type | netspec ms | ORT ms (op) | gap ms |", "|---|---|---:|---:|---:|"]
    for n in gaps:
        a, b = ns["layers"][n], ort["layers"].get(n, 0.0)
        lines.append(f"| {n} | {types.get(n, '?')} | {a:.2f} | {b:.2f} ({ort.get('ops', {}).get(n, '—')}) | "
                     f"{a - b:+.2f} |")
    return lines + [""]


# ------------------------------------------------------------------ main
def machine_lines(found, blas):
    from netspec.timing import describe_machine
    lines = [s for s in describe_machine() if not s.startswith("BLAS")]
    for p in blas or []:
        lines.append(f"BLAS/OpenMP in netspec's process: {p.get('internal_api')} {p.get('version')} "
                     f"architecture={p.get('architecture')} threads={p.get('num_threads')} "
                     f"({p.get('prefix')}, {p.get('threading_layer')})")
    for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if os.environ.get(k):
            lines.append(f"WARNING: {k}={os.environ[k]} is set (run under `env -u {k}`)")
    names = {"ort": "onnxruntime", "opencv": "opencv-python-headless", "torch": "torch", "onnx": "onnx",
             "threadpoolctl": "threadpoolctl", "caffe": "caffe binary"}
    have = [f"{names[p]} {v}" for p, v in found.items() if v]
    missing = [names[p] for p, v in found.items() if not v]
    lines.append("peers: " + (", ".join(have) or "none"))
    lines.append("missing (their columns are empty): " + (", ".join(missing) or "none"))
    try:
        lines.append("load average (1, 5, 15 min) as the run ended: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    except OSError:
        pass
    return lines


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nets", default=None, help=f"comma-separated, of {', '.join(NETS)} (default all)")
    ap.add_argument("--batches", default="1,10", help="deploy nets' batches (LeNet always runs at 64)")
    ap.add_argument("--threads", default="1,2", help="thread counts to compare (default 1,2)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per configuration (default 5)")
    ap.add_argument("--iterations", type=int, default=2, help="timed runs per runner per round (at least)")
    ap.add_argument("--min-seconds", type=float, default=0.2, help="keep running a round's runs up to this long")
    ap.add_argument("--tolerance", type=float, default=1e-4, help="largest relative output difference accepted")
    ap.add_argument("--train-batch", type=int, default=10)
    ap.add_argument("--parts", default="forward,train,contention",
                    help="which of forward,train,contention,profile to run (default the first three)")
    ap.add_argument("--contention-batch", type=int, default=10)
    ap.add_argument("--profile", action="store_true", help="the per-layer-type profile alone (--parts profile)")
    ap.add_argument("--profile-threads", type=int, default=1)
    ap.add_argument("--caffe", default="caffe", help="BVLC Caffe's binary (default: `caffe` from PATH)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: LeNet and SqueezeNet, batch 1, 1 thread, "
                    "2 rounds (under a minute)")
    ap.add_argument("--python", default=sys.executable, help=argparse.SUPPRESS)
    ap.add_argument("--out", help="write the tables as markdown here")
    ap.add_argument("--json", help="also write every sample and check as JSON here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--profile-worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.profile:
        args.parts = "profile"
    if args.quick:
        args.nets = args.nets or "lenet,squeezenet"
        args.batches, args.threads, args.rounds, args.iterations = "1", "1", 2, 1
        args.min_seconds, args.train_batch = 0.0, 2
    try:
        args.net_list = [n.strip() for n in (args.nets or ",".join(NETS)).split(",") if n.strip()]
        args.batch_list = [int(b) for b in args.batches.split(",")]
        args.thread_list = [int(t) for t in args.threads.split(",")]
    except ValueError:
        ap.error("--batches and --threads take comma-separated whole numbers")
    bad = [n for n in args.net_list if n not in NETS]
    if bad:
        ap.error(f"unknown net {bad[0]!r} (choose from {', '.join(NETS)})")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker_main(json.loads(args.worker))
    if args.profile_worker:
        return profile_worker(json.loads(args.profile_worker))
    found = peers_present(args.caffe)
    start, when = time.perf_counter(), datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    cmdline = "benchmarks/bench_peers.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = []
    with tempfile.TemporaryDirectory(prefix="bench_peers_") as tmp:
        def batches(key):
            return [LENET_BATCH] if key == "lenet" else args.batch_list

        cache = {}

        def desc_for(key, batch):
            if (key, batch) not in cache:
                cache[(key, batch)] = prepare(key, batch, os.path.join(tmp, f"{key}_{batch}"), bool(found["onnx"]))
                if cache[(key, batch)].get("onnx_error"):
                    progress(f"    ONNX export failed: {cache[(key, batch)]['onnx_error']}")
            return cache[(key, batch)]

        raw = {}
        if set(args.parts.split(",")) - {"profile"}:
            md += timing_sections(args, found, desc_for, batches, raw)
        if "profile" in args.parts.split(","):
            md += profile_section(args, found, desc_for, batches, raw)
    seconds = time.perf_counter() - start
    blas = _blas_info()
    head = ["# netspec against its peers (ONNX Runtime, OpenCV dnn, Caffe, PyTorch)", "",
            "Written by `benchmarks/bench_peers.py` (its docstring says what is timed and how). Figures on a "
            "shared machine drift 2x: compare within a table, where runners alternate round by round.", ""]
    head += [f"`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE {os.path.relpath(args.python, REPO) if args.python.startswith(REPO) else args.python} {cmdline.strip()}` on {when}, {seconds:.0f} s in all.", ""]
    head += [f"- {line}" for line in machine_lines(found, blas)] + [""]
    text = "\n".join(head + md) + "\n"
    print(text)
    if args.out:
        from netspec.schema import write_atomically
        write_atomically(args.out, text.encode())
        progress(f"wrote {args.out}")
    if args.json:
        from netspec.schema import write_atomically
        write_atomically(args.json, json.dumps(raw, indent=1, default=str).encode())


def profile_section(args, found, desc_for, batches, raw):
    if not (found["ort"] and found["onnx"]):
        return ["Profile: needs onnx and onnxruntime (missing)."]
    md = [f"## Per-layer-type profile: netspec `time_net` vs ONNX Runtime's profiler, "
          f"{args.profile_threads} thread(s)", ""]
    for key in args.net_list:
        for batch in batches(key)[-1:]:
            progress(f"[profile] {key} batch {batch} ...")
            desc = desc_for(key, batch)
            if not desc.get("onnx"):
                md += [f"### {key}: ONNX export failed: {desc.get('onnx_error')}", ""]
                continue
            prof = run_profile(desc, args.profile_threads, max(args.iterations, 3), args.python)
            raw.setdefault("profile", []).append({"net": key, "batch": batch, "types": desc["types"], **prof})
            md += profile_lines(key, desc, prof)
    return md


def timing_sections(args, found, desc_for, batches, raw):
    parts = set(args.parts.split(","))
    peers = [p for p in ("ort", "opencv") if found[p] and (p != "ort" or found["onnx"])]
    caffe = found["caffe"]
    forward_rows, train_rows, contention_rows = [], [], []
    if "forward" in parts:
        for key in args.net_list:
            for batch in batches(key):
                desc = desc_for(key, batch)
                names = ["netspec"] + [p for p in peers if p != "ort" or desc.get("onnx")]
                for threads in args.thread_list:
                    progress(f"[forward] {key} batch {batch}, {threads} thread(s): {', '.join(names)}"
                             + (", caffe" if caffe else ""))
                    res = run_config(names, desc, threads, args, floor=True,
                                     caffe=(caffe, desc, max(args.iterations, 2), threads) if caffe else None)
                    forward_rows.append((key, batch, res))
    quick_only = ["lenet"] if args.quick else args.net_list    # --quick: LeNet alone past the forward part
    if "train" in parts:
        for key in quick_only:
            batch = LENET_BATCH if key == "lenet" else args.train_batch
            if args.quick and key == "lenet":
                batch = 8
            desc = dict(desc_for(key, batch))
            if key == "lenet":
                desc["data_root"] = make_lenet_lmdb(os.path.join(os.path.dirname(desc["dir"]), "lenet_data"))
            names = ["netspec-train"] + (["torch"] if found["torch"] else [])
            for threads in args.thread_list:
                progress(f"[train] {key} batch {batch}, {threads} thread(s): {', '.join(names)}")
                train_rows.append((key, batch, run_config(names, desc, threads, args, floor=True)))
    if "contention" in parts:
        for key in quick_only:
            batch = LENET_BATCH if key == "lenet" else args.contention_batch
            if args.quick:
                batch = batches(key)[-1]
            desc = desc_for(key, batch)
            names = ["netspec"] + [p for p in peers if p != "ort" or desc.get("onnx")]
            progress(f"[contention] {key} batch {batch}, default threads, quiet vs 1 busy process")
            contention_rows.append((key, batch, run_config(names, desc, None, args, busy=True)))
    for part, rows in (("forward", forward_rows), ("train", train_rows), ("contention", contention_rows)):
        if rows:
            raw[part] = [{"net": k, "batch": b, **res} for k, b, res in rows]
    md = ["Ratios are netspec / peer within one interleaved run (below 1: netspec is faster). "
          f"{args.rounds} rounds; each round runs each runner at least {args.iterations} times "
          f"(and for at least {args.min_seconds} s); medians over all samples. Checks: max |peer - netspec| / "
          "max |netspec| over the outputs and the pre-Softmax scores; a peer above "
          f"{args.tolerance:g} is not timed.", ""]
    if forward_rows:
        md += ["## Forward (TEST phase)", ""] + forward_table(forward_rows) + [""] + floor_notes(forward_rows) + [""]
    if train_rows:
        md += ["## Training iteration (forward + backward + SGD update)", "",
               "PyTorch runs peer_torch.build_module(net): the same layers and weights (checked in eval mode); "
               "LeNet with cross-entropy on ip2, the deploy nets with a fixed random gradient on the output "
               "(as netspec's step here).", ""] + train_table(train_rows) + [""]
    scaling = scaling_table(forward_rows, train_rows)
    if len(scaling) > 2:
        md += ["## Second core: time at 1 thread / time at 2 threads", ""] + scaling + [""]
    if contention_rows:
        md += ["## Contention: default threads, quiet vs one competing busy process", "",
               "Each round times every runner quiet, then again while one `python -c 'while True: pass'` "
               "runs.", ""] + contention_table(contention_rows) + [""]
    rss_rows = [(k, b, r) for k, b, r in forward_rows if b == max(batches(k))]
    if rss_rows:
        md += ["## Peak RSS of the inference processes (VmHWM: the whole process, interpreter and imports "
               "included)", ""]
        md += rss_table(rss_rows) + [""]
    return md


if __name__ == "__main__":
    sys.exit(main())
