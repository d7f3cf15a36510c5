"""Fuzzing guards the bad-input rule: mutated inputs either load or raise NetspecError, never anything else.

Seeds: every prototxt/YAML file in models/ and solvers/, plus the YAML spelling
of each prototxt (made at run time), a .caffemodel saved from
models/lenet/lenet.prototxt and a .solverstate from 2 iterations of a tiny Adam
solver (both made at run time). Hypothesis picks a seed, mutates it (bit flips,
truncation, line deletion/duplication, token swaps; chunk deletion, duplication
and overwrites for binaries) and feeds the result to read_net and Net(...),
read_solver and Solver(...), Net.copy_from, and Solver.restore. Nets are built
in a directory laid out like the repository, with tiny LMDBs and mean files at
the data paths the seeds name, so mutated train/test nets get past their data.

Budgets: NETSPEC_FUZZ_EXAMPLES examples per property (default 100, derandomized
so the default suite is repeatable); the `-m slow` twins run 20x that with fresh
randomness. Each test prints how many inputs loaded and how many were refused.
"""
import collections
import contextlib
import datetime
import glob
import os
import re
import resource
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import netspec
from netspec import rng
from netspec.datasets import lmdb_io
from netspec.errors import NetspecError
from netspec.layers import data as data_layers
from netspec.net import Net
from netspec.proto import caffe_pb2
from netspec.schema import message_to_yaml, read_net, read_solver
from netspec.solver import Solver
from netspec.weights import array_to_blob

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_EXAMPLES = int(os.environ.get("NETSPEC_FUZZ_EXAMPLES", "100"))
SLOW_FACTOR = 20
MAX_MUTATIONS = 4
# A mutated net is built only when it stays about as small as the MNIST/CIFAR-10 nets (see
# _small_enough): the ImageNet deploy nets are only parsed. The address-space cap turns anything
# that still slips through into a MemoryError (a failure to fix here), not a swapping machine.
MAX_LAYERS = 32
MAX_INT_FIELD = 1024
MAX_INPUT_COUNT = 100 * 3 * 32 * 32
MEMORY_HEADROOM = 2 << 30
TEXT_SUFFIXES = (".prototxt", ".yaml", ".yml")


def _seed_files(folder):
    found = []
    for suffix in TEXT_SUFFIXES:
        found += glob.glob(os.path.join(REPO, folder, "**", f"*{suffix}"), recursive=True)
    return sorted(os.path.relpath(p, REPO) for p in found)


NET_SEEDS = _seed_files("models")
SOLVER_SEEDS = _seed_files("solvers")

TINY_NET = """
name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "target"
        dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 }
                           data_filler { type: "gaussian" std: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "target" top: "loss" }
"""
TINY_SOLVER = """
net: "tiny.prototxt"
type: "Adam"
base_lr: 0.01
momentum: 0.9
momentum2: 0.999
lr_policy: "fixed"
max_iter: 2
snapshot: 2
snapshot_prefix: "tiny"
random_seed: 3
"""

OUTCOMES = collections.defaultdict(collections.Counter)   # target -> {"loaded": n, "NetspecError": n}


# ------------------------------------------------------------------ the seeds and a place to run

def _image_shape(path):
    """The record shape a seed's data file holds, guessed from its name (the real data is not in git)."""
    if "cifar" in path:
        return (3, 32, 32)
    return (2, 28, 28) if "siamese" in path else (1, 28, 28)


def _write_lmdb(path, shape, count=8):
    records = []
    for i in range(count):
        pixels = ((np.arange(int(np.prod(shape))) * (i + 1)) % 256).astype(np.uint8).reshape(shape)
        records.append((f"{i:08d}", lmdb_io.array_to_datum(pixels, label=i % 10).SerializeToString()))
    lmdb_io.write_lmdb_atomically(path, records)


def _write_mean(path, shape):
    blob = caffe_pb2.BlobProto()
    array_to_blob(np.full((1,) + shape, 100.0, np.float32), blob)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(blob.SerializeToString())


def _data_files(root):
    """Tiny stand-ins for every LMDB and mean file the seed nets read."""
    for seed in NET_SEEDS:
        param = read_net(os.path.join(REPO, seed))
        for layer in param.layer:
            if layer.type == "Data" and layer.data_param.source:
                target = os.path.join(root, layer.data_param.source)
                if not os.path.exists(target):
                    _write_lmdb(target, _image_shape(layer.data_param.source))
            mean = layer.transform_param.mean_file
            if mean and not os.path.exists(os.path.join(root, mean)):
                _write_mean(os.path.join(root, mean), _image_shape(mean))


@contextlib.contextmanager
def _cwd(path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A working directory laid out like the repository (models/, solvers/, data/ stand-ins) plus the
    binary seeds; Net(...) and Solver(...) of mutated files run in it."""
    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(os.path.join(REPO, "models"), root / "models")
    shutil.copytree(os.path.join(REPO, "solvers"), root / "solvers")
    _data_files(str(root))
    saved = rng.get_state()
    with _cwd(root):
        rng.set_seed(5)
        Net("models/lenet/lenet.prototxt", netspec.TEST).save("lenet.caffemodel")
        with open("tiny.prototxt", "w") as f:
            f.write(TINY_NET)
        with open("tiny_solver.prototxt", "w") as f:
            f.write(TINY_SOLVER)
        Solver("tiny_solver.prototxt").step(2)
    rng.set_state(saved)
    assert (root / "tiny_iter_2.solverstate").exists()
    yield root


Seed = collections.namedtuple("Seed", "name suffix data")


def _text_seeds(paths, reader):
    """Each file as it is, and each prototxt also in its YAML spelling."""
    seeds = []
    for path in paths:
        with open(os.path.join(REPO, path), "rb") as f:
            seeds.append(Seed(path, os.path.splitext(path)[1], f.read()))
        if path.endswith(".prototxt"):
            yaml_text = message_to_yaml(reader(os.path.join(REPO, path))).encode("utf-8")
            seeds.append(Seed(path + " as YAML", ".yaml", yaml_text))
    return seeds


@pytest.fixture(scope="module")
def net_seeds():
    return _text_seeds(NET_SEEDS, read_net)


@pytest.fixture(scope="module")
def solver_seeds():
    return _text_seeds(SOLVER_SEEDS, read_solver)


# ------------------------------------------------------------------ mutations

_TOKEN = re.compile(rb'"[^"\n]*"|[\w.+-]+|[{}:\[\],]')
_TEXT_OPS = ("flip", "truncate", "delete_line", "duplicate_line", "swap_tokens")
_BINARY_OPS = ("flip", "truncate", "delete_chunk", "duplicate_chunk", "overwrite")


@st.composite
def mutated(draw, seed, text, hot_spots=()):
    """`seed` after 1..MAX_MUTATIONS random edits; positions prefer `hot_spots` (structure bytes) half the time."""
    data = bytearray(seed)

    def position(size):
        if hot_spots and draw(st.booleans()):
            p = draw(st.sampled_from(hot_spots))
            if p < size:
                return p
        return draw(st.integers(0, size - 1))

    for _ in range(draw(st.integers(1, MAX_MUTATIONS))):
        if not data:
            break
        op = draw(st.sampled_from(_TEXT_OPS if text else _BINARY_OPS))
        if op == "flip":
            data[position(len(data))] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[position(len(data)):]
        elif op in ("delete_line", "duplicate_line"):
            lines = data.split(b"\n")
            i = draw(st.integers(0, len(lines) - 1))
            if op == "delete_line":
                del lines[i]
            else:
                lines.insert(i, lines[i])
            data = bytearray(b"\n".join(lines))
        elif op == "swap_tokens":
            tokens = list(_TOKEN.finditer(bytes(data)))
            if len(tokens) < 2:
                continue
            a, b = sorted(draw(st.lists(st.integers(0, len(tokens) - 1), min_size=2, max_size=2, unique=True)))
            ta, tb = tokens[a], tokens[b]
            data = bytearray(data[:ta.start()] + tb.group() + data[ta.end():tb.start()] + ta.group()
                             + data[tb.end():])
        else:
            start = position(len(data))
            length = draw(st.integers(1, 4096))
            if op == "delete_chunk":
                del data[start:start + length]
            elif op == "duplicate_chunk":
                data[start:start] = data[start:start + length]
            else:
                data[start:start + 8] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


def _structure_offsets(serialized, float_arrays):
    """Offsets of the bytes that are not packed float payloads: where flips change the structure."""
    covered = np.zeros(len(serialized), bool)
    for arr in float_arrays:
        payload = np.asarray(arr, np.float32).tobytes()
        at = serialized.find(payload) if payload else -1
        if at >= 0:
            covered[at:at + len(payload)] = True
    return np.flatnonzero(~covered).tolist()


# ------------------------------------------------------------------ running a loader under guard

@contextlib.contextmanager
def _memory_cap():
    """Cap the address space a little above what the process uses now (restored afterwards)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    try:
        with open("/proc/self/statm") as f:
            in_use = int(f.read().split()[0]) * resource.getpagesize()
    except OSError:             # no /proc: run without the cap
        yield
        return
    cap = in_use + MEMORY_HEADROOM
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


class _DataThreads:
    """Stops the prefetch threads and LMDB cursors that nets built (or half built) in an example left running."""

    def __init__(self, monkeypatch):
        self.prefetchers, self.cursors = [], []
        original_prefetcher, original_cursor = data_layers._Prefetcher.__init__, lmdb_io.LMDBCursor.__init__

        def prefetcher_init(obj, *a, **k):
            original_prefetcher(obj, *a, **k)
            self.prefetchers.append(obj)

        def cursor_init(obj, *a, **k):
            original_cursor(obj, *a, **k)
            self.cursors.append(obj)

        monkeypatch.setattr(data_layers._Prefetcher, "__init__", prefetcher_init)
        monkeypatch.setattr(lmdb_io.LMDBCursor, "__init__", cursor_init)

    def stop(self):
        while self.prefetchers:
            self.prefetchers.pop().stop()
        while self.cursors:
            self.cursors.pop().close()


def _ints(message):
    for field, value in message.ListFields():
        values = value if field.is_repeated else [value]
        if field.type == field.TYPE_MESSAGE:
            for v in values:
                yield from _ints(v)
        elif field.type in (field.TYPE_INT32, field.TYPE_INT64, field.TYPE_UINT32, field.TYPE_UINT64):
            yield from (abs(int(v)) for v in values)


def _small_enough(param):
    """Build only small nets: a mutation can turn 28 into 280 or swap 500 into a dim."""
    if len(param.layer) > MAX_LAYERS:
        return False
    for layer in param.layer:
        if max(_ints(layer), default=0) > MAX_INT_FIELD:
            return False
        for shape in list(layer.input_param.shape) + list(layer.dummy_data_param.shape):
            if int(np.prod([max(d, 1) for d in shape.dim], dtype=np.int64)) > MAX_INPUT_COUNT:
                return False
    return True


def _outcome(target, call):
    """Run call(); record 'loaded' or 'NetspecError'; anything else propagates and fails the example."""
    try:
        result = call()
    except NetspecError as e:
        message = str(e)
        assert message, "a NetspecError needs a message"
        assert "\n" not in message, f"a NetspecError must be one line: {e!r}"
        OUTCOMES[target]["NetspecError"] += 1
        return None
    OUTCOMES[target]["loaded"] += 1
    return result


def _settings(examples, slow):
    # Default budget: derandomized (repeatable) and no example database; slow: fresh randomness.
    return settings(max_examples=examples, deadline=datetime.timedelta(seconds=60), derandomize=not slow,
                    database=None if not slow else settings.default.database,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture], print_blob=True)


BUDGETS = [pytest.param(DEFAULT_EXAMPLES, False, id="default"),
           pytest.param(DEFAULT_EXAMPLES * SLOW_FACTOR, True, id="big", marks=pytest.mark.slow)]


def _report(target):
    counts = OUTCOMES[target]
    print(f"\n{target}: {counts['loaded'] + counts['NetspecError']} inputs: {counts['loaded']} loaded, "
          f"{counts['NetspecError']} refused with NetspecError")


# ------------------------------------------------------------------ the properties

def _mutated_seed(seeds):
    """(seed, mutated bytes): which file is drawn first, then the edits to it."""
    return st.sampled_from(seeds).flatmap(lambda s: mutated(s.data, text=True).map(lambda blob: (s, blob)))


@pytest.mark.parametrize("examples, slow", BUDGETS)
def test_mutated_net_files(examples, slow, net_seeds, work, monkeypatch):
    OUTCOMES.clear()
    threads = _DataThreads(monkeypatch)
    built = collections.Counter()

    @_settings(examples, slow)
    @given(_mutated_seed(net_seeds))
    def check(seed_and_blob):
        seed, blob = seed_and_blob
        path = str(work / f"mutated_net{seed.suffix}")
        with open(path, "wb") as f:
            f.write(blob)
        param = _outcome("read_net", lambda: read_net(path))
        if param is None or not _small_enough(param):
            return
        built[seed.name] += 1
        saved = rng.get_state()
        try:
            with _cwd(work), _memory_cap():
                for phase in (netspec.TRAIN, netspec.TEST):
                    _outcome("Net", lambda: Net(path, phase))
                    threads.stop()
        finally:
            threads.stop()
            rng.set_state(saved)

    check()
    _report("read_net")
    _report("Net")
    print(f"nets built from: {dict(sorted(built.items()))}")


@pytest.mark.parametrize("examples, slow", BUDGETS)
def test_mutated_solver_files(examples, slow, solver_seeds, work, monkeypatch):
    OUTCOMES.clear()
    threads = _DataThreads(monkeypatch)

    @_settings(examples, slow)
    @given(_mutated_seed(solver_seeds))
    def check(seed_and_blob):
        seed, blob = seed_and_blob
        path = str(work / f"mutated_solver{seed.suffix}")
        with open(path, "wb") as f:
            f.write(blob)
        param = _outcome("read_solver", lambda: read_solver(path))
        if param is None:
            return
        nets = [_read_net_quietly(work, f) for f in [param.net, param.train_net, *param.test_net] if f]
        if not all(_small_enough(n) for n in nets) or param.net_param.layer or param.train_net_param.layer:
            return                      # an inline or enlarged net: parsing it was the point
        saved = rng.get_state()
        try:
            with _cwd(work), _memory_cap():
                _outcome("Solver", lambda: Solver(path))
        finally:
            threads.stop()
            rng.set_state(saved)

    check()
    _report("read_solver")
    _report("Solver")


def _read_net_quietly(work, path):
    try:
        with _cwd(work):
            return read_net(path)
    except NetspecError:
        return caffe_pb2.NetParameter()     # missing or broken: Solver(...) refuses it, which is fine


@pytest.mark.parametrize("examples, slow", BUDGETS)
def test_mutated_caffemodel(examples, slow, work):
    OUTCOMES.clear()
    with open(work / "lenet.caffemodel", "rb") as f:
        seed = f.read()
    trained = caffe_pb2.NetParameter.FromString(seed)
    hot = _structure_offsets(seed, [bp.data for layer in trained.layer for bp in layer.blobs])
    net = Net(str(work / "models/lenet/lenet.prototxt"), netspec.TEST)

    @_settings(examples, slow)
    @given(mutated(seed, text=False, hot_spots=hot))
    def check(blob):
        path = str(work / "mutated.caffemodel")
        with open(path, "wb") as f:
            f.write(blob)
        _outcome("copy_from", lambda: net.copy_from(path))

    check()
    _report("copy_from")


@pytest.mark.parametrize("examples, slow", BUDGETS)
def test_mutated_solverstate(examples, slow, work):
    OUTCOMES.clear()
    with open(work / "tiny_iter_2.solverstate", "rb") as f:
        seed = f.read()
    state = caffe_pb2.SolverState.FromString(seed)
    hot = _structure_offsets(seed, [bp.data for bp in state.history])
    with _cwd(work):
        solver = Solver("tiny_solver.prototxt")

    @_settings(examples, slow)
    @given(mutated(seed, text=False, hot_spots=hot))
    def check(blob):
        path = str(work / "mutated.solverstate")
        with open(path, "wb") as f:
            f.write(blob)
        saved = rng.get_state()
        try:
            with _cwd(work):
                _outcome("restore", lambda: solver.restore(path))
        finally:
            rng.set_state(saved)

    check()
    _report("restore")


def test_resume_data_with_an_impossible_rng_state_is_set_aside(work):
    """A case the big fuzz found: a PCG64 state integer too large for numpy (OverflowError)."""
    from netspec.snapshot import read_solverstate, write_solverstate
    state, resume = read_solverstate(str(work / "tiny_iter_2.solverstate"))
    resume["rng"]["state"]["state"] = 1 << 200
    path = str(work / "overflow.solverstate")
    write_solverstate(path, state, resume)
    saved = rng.get_state()
    try:
        with _cwd(work):
            solver = Solver("tiny_solver.prototxt")
            solver.restore(path)        # warns that the resume data is damaged; resumes without it
        assert solver.iter == 2
    finally:
        rng.set_state(saved)


def test_mutations_change_the_seed():
    """The mutation strategy really edits its input (else the properties above would test nothing)."""
    seed = b'layer { name: "a" type: "ReLU" }\nlayer { name: "b" }\n'
    changed = []

    @settings(max_examples=50, derandomize=True, database=None)
    @given(mutated(seed, text=True))
    def collect(blob):
        changed.append(blob != seed)

    collect()
    assert sum(changed) >= 40
