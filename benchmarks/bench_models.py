"""Training-step benchmark for LeNet and the shipped deploy nets, against their GEMM floor.

    .venv/bin/python benchmarks/bench_models.py [--iterations 3] [--batch 10] [--out benchmarks/model_bench.md]
    .venv/bin/python benchmarks/bench_models.py --scaling [--out ... --append]  # LeNet, batch 16/64/256, 1-2 threads
    .venv/bin/python benchmarks/bench_models.py --torch                 # also PyTorch's LeNet step, if installed

For each net, in its own subprocess (so that peak memory is that net's alone): one training
iteration is clear the parameter gradients, forward, backward, and the SGD update of netspec's
Solver.apply_update (momentum 0.9, weight decay 5e-4, LeNet's solver settings). Forward, backward
and update are timed separately; the iteration is their sum. Figures are medians over the timed
iterations, after warm-up iterations that are not counted.

- LeNet: models/lenet/lenet_train_test.prototxt, TRAIN phase, batch 64 from its Data layer over
  data/mnist/mnist_train_lmdb (read by the layer's prefetch thread, as in training).
- Deploy nets: TRAIN phase (Dropout on, BatchNorm on batch statistics unless the file pins global
  ones) with force_backward, so every layer runs backward, but no gradient for the input blobs (as
  in a training net, and in PyTorch); batch --batch; weights and inputs are
  filled by time_models.fill_net. The deploy nets end in Softmax with no loss, so the output diff is
  set to fixed N(0, 1) noise before backward (a diff of all ones would give Softmax an exactly zero
  gradient and so all-zero updates).

The GEMM floor is the time np.matmul takes (float32, C-contiguous operands, best of a few calls) on
exactly the products the net's Convolution, Deconvolution and InnerProduct layers need for the whole
batch: forward W (M/g x K) @ col (K x N*Ho*Wo) per group g; backward the weight gradient
dtop (M/g x N*Ho*Wo) @ col^T and, where the net propagates to the bottom, the data gradient
W^T (K x M/g) @ dtop. Biases, im2col/col2im and every other layer are left out, so floor/iteration
says how far the net is from pure BLAS.

floors() adds the algorithm floor (bench_peers' forward table shows it): the products of the engine
netspec's reshape picks for each convolution instead of im2col's. A WinogradConv layer (3x3,
stride 1, in nets that run no backward) counts F(2x2, 3x3)'s 16 x g products of U (M/g x C/g) by
V (C/g x tiles), tiles = N x ceil(Ho/2) x ceil(Wo/2); a DepthwiseConv layer counts no GEMM, and its
direct kernel is timed apart (depthwise_fwd_ms: netspec's forward of the layer alone, not floor
work); other engines and InnerProduct count their im2col products as above. The Winograd weight
transform netspec redoes on every forward is timed apart too (winograd_weights_ms).

Peak RSS is the child's ru_maxrss after the timed iterations (before the floor's own matrices are
allocated); "base" is the RSS of the interpreter with numpy and netspec imported, before the net
is built.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

LENET = "models/lenet/lenet_train_test.prototxt"
DEPLOY = [
    "models/caffenet/deploy.prototxt",
    "models/googlenet/deploy.prototxt",
    "models/resnet50/ResNet-50-deploy.prototxt",
    "models/squeezenet/squeezenet_v1.1_deploy.prototxt",
    "models/mobilenet/mobilenet_deploy.prototxt",
]
SCALING_BATCHES = (16, 64, 256)
SCALING_THREADS = (1, 2)
# NETSPEC_THREADS sets netspec's own threads (netspec/threads.py, which holds the BLAS to one);
# the BLAS variables matter only to code that runs GEMMs outside netspec (the floor, PyTorch).
THREAD_VARS = ("NETSPEC_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _maxrss_mb():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # KiB on Linux


# ------------------------------------------------------------------ GEMM floor
def gemm_shapes(net):
    """[(layer, role, g, m, k, n)] for each product the net's GEMM layers need: g stacked (m x k) @ (k x n).

    role is "fwd", "wgrad" or "dgrad"; backward products are listed only for layers the net
    runs backward on (dgrad only where the bottom gets a gradient). Geometry comes from the built
    net's blobs (weight and top shapes), not from the layers' internals.
    """
    return [shape for record in net.records for shape in layer_gemms(record)]


def layer_gemms(record):
    """gemm_shapes' entries for one layer record: its im2col (or InnerProduct) products; [] for other layers."""
    name, layer = record.name, record.layer
    kind = layer.type
    if kind not in ("Convolution", "Deconvolution", "InnerProduct") or not layer.blobs:
        return []
    out = []
    w = layer.blobs[0].shape
    back = record.need_backward
    for j, (bottom, top) in enumerate(zip(record.bottoms, record.tops)):
        dgrad = back and record.bottom_need_backward[j]
        if kind == "InnerProduct":
            p = layer.layer_param.inner_product_param
            n_out, k = (w[1], w[0]) if p.transpose else (w[0], w[1])
            m = bottom.count // k
            gemms = [("fwd", 1, m, k, n_out)]
            if back:
                gemms.append(("wgrad", 1, n_out, m, k))
            if dgrad:
                gemms.append(("dgrad", 1, m, n_out, k))
        else:
            p = layer.layer_param.convolution_param
            axis = p.axis % len(bottom.shape) if p.HasField("axis") else 1
            g = p.group
            kk = 1
            for d in w[1:]:
                kk *= d
            if kind == "Convolution":
                # weight (M, C/g, kh, kw); columns over the output positions of the whole batch.
                m, k, src = w[0] // g, kk, top
            else:
                # Deconvolution: weight (C, M/g, kh, kw); its forward is W^T @ x over the input positions.
                m, k, src = kk, w[0] // g, bottom
            cols = 1
            for d in src.shape[:axis] + src.shape[axis + 1:]:
                cols *= d
            gemms = [("fwd", g, m, k, cols)]
            if back:
                gemms.append(("wgrad", g, m, cols, k))
            if dgrad:
                gemms.append(("dgrad", g, k, m, cols))
        out += [(name, role, g, m, k, n) for role, g, m, k, n in gemms]
    return out


def best_ms(call, repeats=2):
    """Best-of-`repeats` ms of one `call()`, after a warm-up call: the floors' repetition rule."""
    t = time.perf_counter()
    call()
    # Small products take microseconds: average enough calls per sample that the clock's cost vanishes.
    calls = max(1, min(100, int(0.002 / max(time.perf_counter() - t, 1e-7))))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            call()
        best = min(best, (time.perf_counter() - t) / calls)
    return best * 1e3


def time_gemm(g, m, k, n, repeats=2, seed=0):
    """Best-of-`repeats` ms of np.matmul for g stacked (m x k) @ (k x n), float32, after a warm-up call."""
    import numpy as np
    rng = np.random.default_rng(seed)
    shape = (lambda *s: s) if g > 1 else (lambda *s: s[1:])
    a = rng.standard_normal(shape(g, m, k), dtype=np.float32)
    b = rng.standard_normal(shape(g, k, n), dtype=np.float32)
    c = np.empty(shape(g, m, n), np.float32)
    return best_ms(lambda: np.matmul(a, b, out=c), repeats)


def best_times(keys, passes=3, best=None):
    """{(g, m, k, n): best ms} over `passes` sweeps of the distinct keys, each keeping its best,
    added to `best` (keys already there are timed again and keep the lower figure).

    Samples are spread over sweeps because on a shared machine a multi-threaded GEMM can stall for
    a whole time slice when one of its threads is descheduled, and such stalls come in bursts, so
    samples spread over time find the undisturbed figure sooner.
    """
    best = {} if best is None else best
    for _ in range(passes):
        for key in dict.fromkeys(keys):
            best[key] = min(best.get(key, float("inf")), time_gemm(*key))
    return best


def gemm_floor(shapes, passes=3, best=None):
    """{"fwd_ms", "bwd_ms", "gflop_fwd", "gflop_bwd", "grouped_ms"}: each distinct shape's best time, summed.

    grouped_ms is the part spent in products with group > 1 (CaffeNet's two halves, MobileNet's
    depthwise convolutions, where g = channels and each product is a tiny (1 x 9) @ (9 x N*H*W)).
    The shapes are timed by best_times (`passes` sweeps) unless `best` already holds them all.
    """
    keys = [(g, m, k, n) for _, _, g, m, k, n in shapes]
    if best is None or any(key not in best for key in keys):
        best = best_times(keys, passes, best)
    total = {"fwd_ms": 0.0, "bwd_ms": 0.0, "gflop_fwd": 0.0, "gflop_bwd": 0.0, "grouped_ms": 0.0}
    for _, role, g, m, k, n in shapes:
        side = "fwd" if role == "fwd" else "bwd"
        total[f"{side}_ms"] += best[(g, m, k, n)]
        if g > 1:
            total["grouped_ms"] += best[(g, m, k, n)]
        total[f"gflop_{side}"] += 2.0 * g * m * k * n / 1e9
    return total


# ------------------------------------------------------------------ algorithm floor
# Engines (netspec/layers/conv*.py) whose products are gemm_shapes' im2col GEMMs, up to how they
# cut them into blocks: their floor is the GEMM floor's.
IM2COL_ENGINES = ("StackedConv", "PointwiseConv", "ColumnConv", "BatchInnerConv")
# F(2x2, 3x3): each 2x2 output tile is 16 products of transformed 4x4 input patches (conv_winograd.py).
WINOGRAD_POINTS = 16


def engine_name(record):
    """The class name of the engine the layer's reshape picked (Convolution only), else None."""
    engine = getattr(record.layer, "engine", None)
    return None if engine is None else type(engine).__name__


def winograd_tiles(top_shape):
    """F(2x2, 3x3)'s 2x2 output tiles over the batch, from the top's (N, K, Ho, Wo):
    N x ceil(Ho / 2) x ceil(Wo / 2) (a map of odd size has a half-empty last tile)."""
    num, _, oh, ow = top_shape
    return num * ((oh + 1) // 2) * ((ow + 1) // 2)


def winograd_gemms(record):
    """The Winograd engine's products for one layer, as gemm_shapes' entries: per group, 16 GEMMs
    of the transformed weights U (K/G x C/G) by the transformed tiles V (C/G x tiles), so
    16 x G stacked products over the batch's tiles."""
    k, c_per_group = record.layer.blobs[0].shape[:2]
    group = record.layer.layer_param.convolution_param.group
    return [(record.name, "fwd", WINOGRAD_POINTS * group, k // group, c_per_group, winograd_tiles(top.shape))
            for top in record.tops]


def winograd_weight_transforms(record):
    """The Winograd engine's weight transform, one per bottom on every forward, in gemm_shapes' form:
    16 entries of U from the 9 taps of each of the K*C/G kernels (G g G^T; netspec's compiled
    loop does it, timed by weight_transform_call)."""
    k, c_per_group = record.layer.blobs[0].shape[:2]
    return [(record.name, "fwd", 1, WINOGRAD_POINTS, 9, k * c_per_group) for _ in record.tops]


def weight_transform_call(kernels, seed=0):
    """A call running netspec's compiled Winograd weight transform on `kernels` random 3x3 kernels."""
    import numpy as np
    from netspec.layers import conv_winograd
    w = np.random.default_rng(seed).standard_normal((kernels, 1, 3, 3)).astype(np.float32)
    u = np.empty((16, kernels, 1), np.float32)
    return lambda: conv_winograd.transform_weights(w, u, 0, kernels)


def algorithm_work(net):
    """What the algorithm floor counts, per the engine each convolution runs: the one its reshape
    picks for the net's shapes (net.reshape() first: the engines built with the net are chosen
    before the net knows which layers run backward, and forward reshapes again):

    {"gemms": gemm_shapes-style entries: Winograd layers' 16 x G products on their real tile count,
               the im2col products of every other GEMM layer (the im2col engines, InnerProduct);
     "weight_transforms": the Winograd layers' per-forward weight-transform products (not floor work:
               a runner transforms deploy weights once; netspec does it on every forward);
     "depthwise": the records run by the direct depthwise engine, no GEMM (their kernel is timed apart);
     "unmodelled": names of layers whose engine this file does not know (counted as im2col GEMMs)}.
    """
    net.reshape()
    work = {"gemms": [], "weight_transforms": [], "depthwise": [], "unmodelled": []}
    for record in net.records:
        engine = engine_name(record)
        if engine == "WinogradConv":
            work["gemms"] += winograd_gemms(record)
            work["weight_transforms"] += winograd_weight_transforms(record)
        elif engine == "DepthwiseConv":
            work["depthwise"].append(record)
        else:
            if engine is not None and engine not in IM2COL_ENGINES:
                work["unmodelled"].append(record.name)
            work["gemms"] += layer_gemms(record)
    return work


def direct_forward(record, seed=0):
    """A call running the record's layer forward alone on fresh blobs of its bottoms' and tops'
    shapes (random bottoms), so the net's own blobs, which may share memory, are left alone."""
    import numpy as np
    from netspec.blob import Blob
    rng = np.random.default_rng(seed)
    bottoms, tops = [Blob(b.shape) for b in record.bottoms], [Blob(t.shape) for t in record.tops]
    for b in bottoms:
        b.data[...] = rng.standard_normal(b.shape)
    record.layer.reshape(bottoms, tops)      # the same shapes: the engine the net picked stays
    return lambda: record.layer.forward(bottoms, tops)


def floors(net, passes=3):
    """Both floors of the built (reshaped) net, its GEMMs timed once for both: gemm_floor's keys,
    and the algorithm floor's as alg_fwd_ms, alg_bwd_ms, alg_gflop_fwd, alg_gflop_bwd, plus
    depthwise_fwd_ms (the direct depthwise layers' forward, netspec's kernel at netspec's threads,
    best of the same repetition rule), winograd_weights_ms (the compiled weight transforms, in one
    thread, same rule), and the layer
    counts. Each sweep times every GEMM shape and every depthwise layer, `passes` sweeps."""
    shapes, work = gemm_shapes(net), algorithm_work(net)
    keys = [(g, m, k, n) for _, _, g, m, k, n in shapes + work["gemms"]]
    calls = [direct_forward(record) for record in work["depthwise"]]
    transforms = [weight_transform_call(entry[5]) for entry in work["weight_transforms"]]
    best, direct, transform_ms = {}, [float("inf")] * len(calls), [float("inf")] * len(transforms)
    for _ in range(passes):
        best_times(keys, 1, best)
        direct = [min(t, best_ms(call)) for t, call in zip(direct, calls)]
        transform_ms = [min(t, best_ms(call)) for t, call in zip(transform_ms, transforms)]
    out = gemm_floor(shapes, best=best)
    alg = gemm_floor(work["gemms"], best=best)
    out.update({"alg_fwd_ms": alg["fwd_ms"], "alg_bwd_ms": alg["bwd_ms"], "alg_gflop_fwd": alg["gflop_fwd"],
                "alg_gflop_bwd": alg["gflop_bwd"], "depthwise_fwd_ms": sum(direct, 0.0),
                "winograd_weights_ms": sum(transform_ms, 0.0),
                "winograd_layers": len({entry[0] for entry in work["weight_transforms"]}), "depthwise_layers": len(calls),
                "unmodelled": work["unmodelled"]})
    return out


# ------------------------------------------------------------------ one net, in this process
def _solver_for(net_param, source):
    """A netspec Solver (SGD, LeNet's settings, no test nets, no snapshots) training `net_param`."""
    from netspec.proto import caffe_pb2
    from netspec.solver import Solver
    sp = caffe_pb2.SolverParameter(base_lr=0.01, momentum=0.9, weight_decay=0.0005, lr_policy="inv",
                                   gamma=0.0001, power=0.75, display=0, max_iter=1000000, type="SGD")
    sp.net_param.CopyFrom(net_param)
    return Solver(source, sp)


def build(model, batch, data_root=REPO):
    """(solver, output diff seeds): the net of `model` at `batch`, TRAIN phase, ready to train.

    Data layer sources are taken relative to `data_root` (the repository, where the main job
    builds the MNIST LMDBs; tests pass a folder with small ones)."""
    import numpy as np
    from netspec.schema import read_net
    from time_models import fill_net, set_input_batch
    param = read_net(os.path.join(REPO, model))
    seeds = {}
    data = [lp for lp in param.layer if lp.type == "Data"]
    if data:
        # A train net (LeNet's): its Data layer feeds it and its fillers initialise it.
        for lp in data:
            # Sources are relative to the repository root; the child may run anywhere.
            lp.data_param.source = os.path.join(data_root, lp.data_param.source)
            lp.data_param.batch_size = batch
        solver = _solver_for(param, model)
    else:
        # A deploy net: Input blobs, no fillers, no loss.
        set_input_batch(param, batch)
        param.force_backward = True
        solver = _solver_for(param, model)
        no_input_gradient(solver.net)
        fill_net(solver.net)
        rng = np.random.default_rng(1)
        seeds = {name: rng.standard_normal(solver.net.blobs[name].shape).astype(np.float32)
                 for name in solver.net.outputs}
    return solver, seeds


def no_input_gradient(net):
    """No gradient for the net's input blobs. force_backward (which the deploy nets need, having no
    loss) also turns on the first convolution's data gradient, which a training net never runs (its
    data layer's tops take none) and PyTorch does not either (its inputs do not require grad):
    ResNet-50's conv1 spent 35 of its 71 ms of backward there at batch 10."""
    inputs = set(net.inputs)
    for record in net.records:
        record.bottom_need_backward = [need and name not in inputs
                                       for need, name in zip(record.bottom_need_backward, record.bottom_names)]


def train_step(solver, seeds):
    """One training iteration as a whole: clear diffs, forward, the output diff seeds, backward, update."""
    net = solver.net
    net.clear_param_diffs()
    net.forward_prefilled()
    for name, seed in seeds.items():
        net.blobs[name].diff[...] = seed
    net.backward_from_to()
    solver.apply_update()


def bench_net(model, batch, iterations=3, warmup=1, floor=True, floor_passes=3, data_root=REPO):
    """Time `iterations` training iterations of `model` (after `warmup`) and its GEMM floor; a dict."""
    import numpy as np
    from netspec import glog
    glog.configure(open(os.devnull, "w"))
    base_mb = _maxrss_mb()
    t = time.perf_counter()
    solver, seeds = build(model, batch, data_root)
    build_s = time.perf_counter() - t
    net = solver.net
    clock = time.perf_counter
    samples = []
    loss = 0.0
    for it in range(warmup + iterations):
        t0 = clock()
        net.clear_param_diffs()
        loss = net.forward_prefilled()
        t1 = clock()
        for name, seed in seeds.items():
            net.blobs[name].diff[...] = seed
        net.backward_from_to()
        t2 = clock()
        solver.apply_update()
        solver.iter += 1
        t3 = clock()
        if it >= warmup:
            samples.append((t1 - t0, t2 - t1, t3 - t2, t3 - t0))
    peak_mb = _maxrss_mb()
    med = np.median(np.array(samples), axis=0) * 1e3 if samples else np.zeros(4)
    finite = bool(np.isfinite(loss)) and all(np.all(np.isfinite(b.data)) for b, _, _ in net.learnable_params)
    shapes = gemm_shapes(net)
    result = {
        "model": model, "name": net.name, "batch": batch, "iterations": iterations, "warmup": warmup,
        "layers": len(net.layers), "params": int(sum(b.count for b, _, _ in net.learnable_params)),
        "forward_ms": float(med[0]), "backward_ms": float(med[1]), "update_ms": float(med[2]),
        "iteration_ms": float(med[3]), "best_iteration_ms": float(min(s[3] for s in samples) * 1e3) if samples else 0.0,
        "build_s": build_s, "base_rss_mb": base_mb, "peak_rss_mb": peak_mb, "finite": finite,
        "loss": float(loss), "gemms": len(shapes), "blas_threads": _blas_threads(), "load1": _load1(),
    }
    if floor:
        # The floor is the BLAS's own threading over the cores netspec uses (netspec holds it to one).
        from threadpoolctl import threadpool_limits
        from netspec.threads import get_threads
        with threadpool_limits(limits=get_threads(), user_api="blas"):
            result.update(gemm_floor(shapes, floor_passes))
    return result


def _load1():
    # The 1-minute load average as the net finishes: on a shared 2-core machine, the noise gauge.
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def _blas_threads():
    # netspec's thread count (its layers split their work; the BLAS runs one thread under each).
    from netspec.threads import get_threads
    return get_threads()


# ------------------------------------------------------------------ PyTorch comparison (optional)
def bench_torch(batch, iterations, warmup, threads=None):
    """LeNet's training step in PyTorch on random MNIST-shaped data, or None when torch is missing."""
    try:
        import torch
    except ImportError:
        return None
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(1, 20, 5), nn.MaxPool2d(2, 2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2, 2),
                          nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=0.0005)
    x = torch.rand(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    loss_fn = nn.CrossEntropyLoss()
    samples = []
    for it in range(warmup + iterations):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        if it >= warmup:
            samples.append((t1 - t0, t2 - t1, t3 - t2, t3 - t0))
    samples.sort(key=lambda s: s[3])
    f, b, u, total = (x * 1e3 for x in samples[len(samples) // 2])
    return {"torch": torch.__version__, "batch": batch, "forward_ms": f, "backward_ms": b, "update_ms": u,
            "iteration_ms": total, "threads": torch.get_num_threads(), "peak_rss_mb": _maxrss_mb()}


# ------------------------------------------------------------------ parent: subprocesses and tables
def run_child(args, threads=None):
    """Run this script with --child `args` in a fresh interpreter; its JSON result (or an error dict)."""
    env = dict(os.environ)
    if threads:
        for var in THREAD_VARS:      # read by the BLAS when numpy loads it, hence a fresh process
            env[var] = str(threads)
    cmd = [sys.executable, os.path.abspath(__file__), "--child"] + [str(a) for a in args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    return json.loads(lines[-1])


def _progress(msg):
    print(msg, file=sys.stderr, flush=True)


def models_table(results):
    head = ("| net | batch | fwd ms | bwd ms | update ms | iter ms | GEMM floor fwd | floor bwd | floor iter "
            "| iter / floor | GFLOP / iter | peak RSS MB (base) | load |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['model']} | | error: {r['error']} |" + " |" * 10)
            continue
        floor = r["fwd_ms"] + r["bwd_ms"]
        lines.append(
            f"| {r['name']} | {r['batch']} | {r['forward_ms']:.1f} | {r['backward_ms']:.1f} | {r['update_ms']:.1f} | "
            f"{r['iteration_ms']:.1f} | {r['fwd_ms']:.1f} | {r['bwd_ms']:.1f} | {floor:.1f} | "
            f"{r['iteration_ms'] / floor:.1f}x | {r['gflop_fwd'] + r['gflop_bwd']:.2f} | "
            f"{r['peak_rss_mb']:.0f} ({r['base_rss_mb']:.0f}) | {r['load1']:.1f} |")
    return lines


def scaling_table(results):
    # Ratios use the best iteration: a 2-thread BLAS on a shared 2-core machine stalls whenever one
    # of its threads is descheduled, which can move even a median of 20 short iterations.
    lines = ["| batch | BLAS threads | iter ms (median) | best iter ms | best ms / image | GEMM floor ms "
             "| best / floor | GFLOP / iter | best vs batch 16 | work vs batch 16 | peak RSS MB | load |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    first = {}
    for r in results:
        if "error" in r:
            lines.append(f"| {r.get('batch', '')} | {r.get('threads', '')} | error: {r['error']} |" + " |" * 9)
            continue
        floor, work = r["fwd_ms"] + r["bwd_ms"], r["gflop_fwd"] + r["gflop_bwd"]
        best = r["best_iteration_ms"]
        ref = first.setdefault(r["blas_threads"], (best, work))
        lines.append(f"| {r['batch']} | {r['blas_threads']} | {r['iteration_ms']:.1f} | {best:.1f} | "
                     f"{best / r['batch']:.3f} | {floor:.1f} | {best / floor:.1f}x | "
                     f"{work:.3f} | {best / ref[0]:.1f}x | {work / ref[1]:.1f}x | "
                     f"{r['peak_rss_mb']:.0f} | {r['load1']:.1f} |")
    return lines


def torch_lines(netspec_result, torch_result):
    if torch_result is None:
        return ["PyTorch: not installed (`import torch` failed); comparison skipped."]
    t, n = torch_result, netspec_result
    lines = ["| LeNet train step, batch %d | fwd ms | bwd ms | update ms | iter ms |" % t["batch"],
             "|---|---:|---:|---:|---:|",
             f"| PyTorch {t['torch']} ({t['threads']} threads, random data) | {t['forward_ms']:.2f} | "
             f"{t['backward_ms']:.2f} | {t['update_ms']:.2f} | {t['iteration_ms']:.2f} |"]
    if n and "error" not in n:
        lines.append(f"| netspec (Data layer from LMDB) | {n['forward_ms']:.2f} | {n['backward_ms']:.2f} | "
                     f"{n['update_ms']:.2f} | {n['iteration_ms']:.2f} |")
    return lines


def machine_lines():
    from netspec.timing import describe_machine
    import numpy as np
    # describe_machine's BLAS line needs threadpoolctl for the thread count; numpy's config names the library.
    lines = [line for line in describe_machine() if not line.startswith("BLAS")]
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        lines.append(f"BLAS: {blas.get('name')} {blas.get('version', '')}".strip())
    except (TypeError, KeyError, AttributeError):
        pass
    try:
        lines.append("load average at start: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    except OSError:
        pass
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=3, help="timed iterations per deploy net (default 3)")
    ap.add_argument("--lenet-iterations", type=int, default=None,
                    help="timed LeNet iterations (default 20; 40 with --scaling)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed iterations first (LeNet: 3 more)")
    ap.add_argument("--batch", type=int, default=10, help="deploy nets' batch (default 10)")
    ap.add_argument("--lenet-batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="threads for the children (NETSPEC_THREADS; default: the cores)")
    ap.add_argument("--scaling", action="store_true", help="LeNet at batch 16, 64, 256 with 1 and 2 BLAS threads")
    ap.add_argument("--torch", action="store_true", help="also time LeNet's step in PyTorch if it is installed")
    ap.add_argument("--out", help="write the tables as markdown here (e.g. benchmarks/model_bench.md)")
    ap.add_argument("--append", action="store_true", help="append to --out instead of overwriting it")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("models", nargs="*", help="nets to run (default: LeNet train and the five deploy nets)")
    args = ap.parse_args(argv)
    if args.lenet_iterations is None:
        args.lenet_iterations = 40 if args.scaling else 20

    if args.child:
        kind = args.child[0]
        if kind == "torch":
            batch, iterations, warmup = map(int, args.child[1:4])
            result = bench_torch(batch, iterations, warmup, args.threads)
            print(json.dumps(result if result is not None else {"missing": "torch"}))
        else:
            batch, iterations, warmup = map(int, args.child[1:4])
            print(json.dumps(bench_net(kind, batch, iterations, warmup)))
        return

    start = time.perf_counter()
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    cmdline = "benchmarks/bench_models.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = []
    if args.scaling:
        title = "LeNet scaling (train iteration vs batch and BLAS threads)"
        results = []
        for threads in SCALING_THREADS:
            for batch in SCALING_BATCHES:
                _progress(f"[scaling] LeNet batch {batch}, {threads} BLAS thread(s) ...")
                r = run_child([LENET, batch, args.lenet_iterations, args.warmup + 3], threads)
                r.setdefault("batch", batch)
                r.setdefault("threads", threads)
                results.append(r)
                if "error" not in r:
                    _progress(f"    {r['iteration_ms']:.1f} ms / iteration, floor {r['fwd_ms'] + r['bwd_ms']:.1f} ms")
        table = scaling_table(results)
        notes = [f"Each row: {args.lenet_iterations} timed iterations (median and best) after {args.warmup + 3} "
                 "warm-up, in its own process with OPENBLAS_NUM_THREADS / OMP_NUM_THREADS set before numpy loads. "
                 "\"best vs batch 16\" against \"work vs batch 16\" (GEMM GFLOP) shows whether time grows "
                 "faster than the work."]
    else:
        title = "Model training-step benchmark"
        results = []
        todo = args.models or [LENET] + DEPLOY
        for n, model in enumerate(todo, 1):
            lenet = model == LENET
            batch = args.lenet_batch if lenet else args.batch
            iters = args.lenet_iterations if lenet else args.iterations
            warm = args.warmup + 3 if lenet else args.warmup
            _progress(f"[{n}/{len(todo)}] {model} batch {batch}: {warm} warm-up + {iters} timed iterations ...")
            t = time.perf_counter()
            r = run_child([model, batch, iters, warm], args.threads)
            r.setdefault("model", model)
            results.append(r)
            if "error" in r:
                _progress(f"    failed: {r['error']}")
            else:
                _progress(f"    {r['iteration_ms']:.1f} ms / iteration (floor {r['fwd_ms'] + r['bwd_ms']:.1f} ms), "
                          f"peak {r['peak_rss_mb']:.0f} MB, {time.perf_counter() - t:.0f} s")
        table = models_table(results)
        grouped = [f"{r['name']} {r['grouped_ms']:.0f} of {r['fwd_ms'] + r['bwd_ms']:.0f} ms" for r in results
                   if r.get("grouped_ms")]
        notes = [f"Deploy nets: batch {args.batch}, {args.iterations} timed iterations (median) after "
                 f"{args.warmup} warm-up; LeNet: batch {args.lenet_batch}, {args.lenet_iterations} after "
                 f"{args.warmup + 3}. iter = clear diffs + fwd + bwd + SGD update (netspec Solver.apply_update). "
                 "GEMM floor = np.matmul alone on the net's conv/InnerProduct products (fwd; bwd = weight + data "
                 "gradients); GFLOP counts those products only."]
        if grouped:
            notes += ["", "Of the floor, grouped products (group > 1; numpy runs one small GEMM per group, and a "
                      "depthwise 1 x 9 product is memory-bound, so there the 'floor' is no BLAS-speed bound): "
                      + "; ".join(grouped) + "."]
        if args.torch:
            _progress("[torch] LeNet step in PyTorch ...")
            tr = run_child(["torch", args.lenet_batch, args.lenet_iterations, args.warmup + 3], args.threads)
            lenet_r = next((r for r in results if r.get("model") == LENET), None)
            if "error" in tr:
                table += ["", f"PyTorch: failed ({tr['error']})."]
            else:
                table += [""] + torch_lines(lenet_r, None if "missing" in tr else tr)
    seconds = time.perf_counter() - start
    print("\n".join(table))
    print(f"({seconds:.0f} s)", file=sys.stderr)
    if args.out:
        md = [f"## {title}", "", f"`{cmdline.strip()}` on {when}, {seconds:.0f} s in all.", ""]
        md += [f"- {line}" for line in machine_lines()] + [""] + notes + [""] + table + [""]
        if not args.append:
            md = ["# netspec model benchmarks", "", "Written by `benchmarks/bench_models.py` (see its docstring "
                  "for what is timed and how the GEMM floor is computed). The machine is shared (2 cores, "
                  "other jobs running), so absolute figures are rough; compare within a table.", ""] + md
        with open(args.out, "a" if args.append else "w") as f:
            f.write("\n".join(md) + "\n")
        _progress(f"wrote {args.out}")


if __name__ == "__main__":
    main()
