"""Data-parallel training over MPI (netspec.parallel): strided data, gradient buckets, and real
`mpirun -n 2` runs: equivalence with one process at twice the batch, exact resume, failing ranks."""
import gzip
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import numpy as np
import pytest

import netspec as caffe
from netspec import parallel
from netspec.blob import Blob
from netspec.datasets.lmdb_io import array_to_datum, write_lmdb_atomically
from netspec.proto import caffe_pb2
from netspec.schema import parse_prototxt
from netspec.snapshot import read_solverstate
from netspec.solver import Solver

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPIRUN = shutil.which("mpirun")


def _mpi_missing():
    if MPIRUN is None:
        return "mpirun not found (apt-get install openmpi-bin libopenmpi-dev)"
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py not installed (pip install -e '.[mpi]')"
    return None


@pytest.fixture
def mpi():
    missing = _mpi_missing()
    if missing and os.environ.get("CI"):
        pytest.fail(f"CI must provide MPI (.ci/run installs it): {missing}")
    if missing:
        pytest.skip(missing)


def mpirun(n, *args):
    cmd = [MPIRUN, "-n", str(n)]
    if b"Open MPI" in subprocess.run([MPIRUN, "--version"], capture_output=True).stdout:
        cmd.append("--oversubscribe")
    return cmd + list(args)


def mpi_env(**extra):
    # Open MPI refuses root without these; harmless elsewhere.
    return dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", **extra)


def run(cmd, cwd, timeout=120, **kw):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=mpi_env(), **kw)


# ---------------------------------------------------------------- data and nets
@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """601 MNIST records (an odd count, so the ranks' shares wrap around unevenly)."""
    folder = tmp_path_factory.mktemp("mpi_data")
    with gzip.open(os.path.join(REPO, "data/mnist/train-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16, count=601 * 784).reshape(601, 1, 28, 28)
    with gzip.open(os.path.join(REPO, "data/mnist/train-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8, count=601)
    write_lmdb_atomically(str(folder / "train_lmdb"), ((f"{i:08d}", array_to_datum(a, l).SerializeToString())
                                                     for i, (a, l) in enumerate(zip(images, labels))))
    # Labels = record index, to see exactly which records a batch holds.
    write_lmdb_atomically(str(folder / "index_lmdb"), ((f"{i:08d}", array_to_datum(a, i).SerializeToString())
                                                     for i, a in enumerate(images[:23])))
    return folder


NET = """
name: "mlp"
layer {{ name: "mnist" type: "Data" top: "data" top: "label"
        transform_param {{ scale: 0.00390625 {transform} }}
        data_param {{ source: "{db}" batch_size: {batch} backend: LMDB }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1" param {{ lr_mult: 1 }} param {{ lr_mult: 2 }}
        inner_product_param {{ num_output: 32 weight_filler {{ type: "xavier" }}
                               bias_filler {{ type: "constant" value: 0.1 }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }}
{dropout}
layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param {{ num_output: 10 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }}
"""
DROPOUT = 'layer { name: "drop1" type: "Dropout" bottom: "ip1" top: "ip1" dropout_param { dropout_ratio: 0.3 } }'

SOLVER = """
net: "{net}"
base_lr: 0.05
momentum: 0.9
weight_decay: 0.0005
lr_policy: "inv"
gamma: 0.0001
power: 0.75
display: 5
max_iter: {max_iter}
snapshot: {snapshot}
snapshot_prefix: "{prefix}"
random_seed: 1701
"""


def write_job(folder, name, db, batch, max_iter=20, snapshot=10, random=False):
    net = folder / f"{name}_net.prototxt"
    net.write_text(NET.format(db=db, batch=batch, transform="mirror: true crop_size: 26" if random else "",
                              dropout=DROPOUT if random else ""))
    solver = folder / f"{name}_solver.prototxt"
    solver.write_text(SOLVER.format(net=net, max_iter=max_iter, snapshot=snapshot, prefix=folder / name / "mlp"))
    return str(solver)


def caffemodel(path):
    model = caffe_pb2.NetParameter.FromString(open(path, "rb").read())
    return {l.name: [np.array(b.data, np.float32) for b in l.blobs] for l in model.layer if l.blobs}


def displayed_losses(log):
    return [(int(i), float(v)) for i, v in re.findall(r"Iteration (\d+) \(.*\), loss = (\S+)", log)]


def log_pids(log):
    return set(re.findall(r"^[IWEF]\d{4} [\d:.]+ (\d+) ", log, re.M))


# ---------------------------------------------------------------- without MPI
def test_launcher_variables_and_single_process_never_imports_mpi4py(tmp_path, records):
    assert parallel.launched_world({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "3"})[:2] == (3, 4)
    assert parallel.launched_world({"PMI_SIZE": "2", "PMI_RANK": "1"})[:2] == (1, 2)
    assert parallel.launched_world({"MV2_COMM_WORLD_SIZE": "3", "MV2_COMM_WORLD_RANK": "0"})[:2] == (0, 3)
    assert parallel.launched_world({}) is None
    assert parallel.from_environment({"OMPI_COMM_WORLD_SIZE": "1"}) is None      # mpirun -n 1: one process
    solver = write_job(tmp_path, "one", records / "train_lmdb", 8, max_iter=2, snapshot=0)
    code = ("import sys; from netspec.cli import run, main_group\n"
            f"try: run(main_group, ['train', '--solver={solver}'])\n"
            "except SystemExit as e: assert e.code == 0, e.code\n"
            "assert 'mpi4py' not in sys.modules, 'mpi4py imported by a single-process run'\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMI_", "MV2_"))}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Optimization Done." in r.stderr


def test_launched_without_mpi4py_says_what_to_install(tmp_path, records):
    fake = tmp_path / "no_mpi4py" / "mpi4py"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named mpi4py')\n")
    solver = write_job(tmp_path, "nompi", records / "train_lmdb", 8, max_iter=2, snapshot=0)
    env = dict(os.environ, PYTHONPATH=str(fake.parent), OMPI_COMM_WORLD_SIZE="2", OMPI_COMM_WORLD_RANK="0")
    r = subprocess.run([sys.executable, "-m", "netspec", "train", f"--solver={solver}"], capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("netspec: error: started by an MPI launcher (OMPI_COMM_WORLD_SIZE=2)")
    assert "pip install mpi4py (or, in the netspec checkout, pip install -e '.[mpi]')" in last and "Traceback" not in r.stderr


def data_layer(db, batch):
    text = f"""layer {{ name: "d" type: "Data" top: "data" top: "label"
               data_param {{ source: "{db}" batch_size: {batch} backend: LMDB }} }}"""
    return caffe.Net(parse_prototxt(textwrap.dedent(text), caffe_pb2.NetParameter()), caffe.TRAIN)


def test_strided_data_layer_reads_every_nth_record_and_resumes_exactly(records):
    db = str(records / "index_lmdb")                  # 23 records, label = index
    ranks = [data_layer(db, 4) for _ in range(3)]
    for r, net in enumerate(ranks):
        layer = net.layer_dict["d"]
        layer.set_stride(3, {"position": r, "rng": layer.get_resume_state()["rng"]})
    one = data_layer(db, 12)                           # one process at 3 x 4 reads the same records
    for it in range(4):                                # 48 records from 23: wraps twice
        one.forward()
        union = []
        for r, net in enumerate(ranks):
            net.forward()
            labels = net.blobs["label"].data.astype(int)
            expected = [(it * 12 + r + 3 * k) % 23 for k in range(4)]      # records r + N*k of this iteration
            assert labels.tolist() == expected
            union += labels.tolist()
        assert sorted(union) == sorted(one.blobs["label"].data.astype(int).tolist())
    state = ranks[1].layer_dict["d"].get_resume_state()
    assert state["position"] == (4 * 12 + 1) % 23
    ranks[1].forward()
    after = ranks[1].blobs["label"].data.copy()
    net = data_layer(db, 4)                            # a resumed rank continues exactly
    net.layer_dict["d"].set_stride(3, state)
    net.forward()
    np.testing.assert_array_equal(net.blobs["label"].data, after)


class FakeComm:
    """A 2-rank world seen from rank 0: the other rank's gradients are ours + 3, its loss 5, no requests."""

    def __init__(self):
        self.calls, self.last = 0, None

    def Get_rank(self):
        return 0

    def Get_size(self):
        return 2

    def Allreduce(self, inplace, buffer, op):
        self.calls += 1
        other = buffer + 3
        if buffer is self.last:
            other[-3:] = (5.0, 0.0, 0.0)
        buffer += other


class FakeMPI:
    IN_PLACE, SUM = object(), object()


def test_buckets_group_params_and_one_allreduce_each_averages_them():
    blobs = [Blob(s) for s in ((3, 4), (4,), (50,), (2, 2))]
    buckets = parallel.make_buckets(blobs, limit=20)
    assert [b.indices for b in buckets] == [[0, 1], [2], [3]]           # 12+4; 50 alone; 4 (+ 3 extra slots)
    assert [b.buffer.size for b in buckets] == [16, 50, 7]
    for i, b in enumerate(blobs):
        b.diff[...] = np.arange(b.count).reshape(b.shape) + i
    expected = [b.diff + 1.5 for b in blobs]          # mean of ours and ours + 3
    comm = FakeComm()
    comm.last = buckets[-1].buffer
    dp = parallel.DataParallel(FakeMPI, comm)
    try:
        dp._learnable, dp._buckets = blobs, buckets
        dp._tail = buckets[-1].buffer[-3:]
        requests = iter(["snapshot", "none"])
        dp._poll_signals = lambda: next(requests)
        loss = dp.reduce_gradients(2.0)
        assert comm.calls == 3                                          # one Allreduce per bucket
        for b, e in zip(blobs, expected):
            np.testing.assert_array_equal(b.diff, e)
        assert loss == pytest.approx((2.0 + 5.0) / 2)                   # the loss rides in the last bucket
        assert dp._agreed_action() == "snapshot" and dp._agreed_action() == "none"
    finally:
        parallel._active = None


# ---------------------------------------------------------------- under mpirun
LAUNCH = """
import sys
from netspec import cli, parallel, solver
from netspec.errors import NetspecError
parallel.BUCKET_VALUES = int(sys.argv[1])
fail_at = int(sys.argv[2])
if fail_at >= 0:
    update = solver.Solver.apply_update
    def failing(self):
        if self.iter == fail_at:
            raise NetspecError(f"injected failure at iteration {fail_at}")
        update(self)
    solver.Solver.apply_update = failing
cli.main(sys.argv[3:])
"""


def launcher(folder, buckets=1 << 22, fail_at=-1):
    path = folder / "launch.py"
    path.write_text(LAUNCH)
    return [sys.executable, str(path), str(buckets), str(fail_at)]


def test_two_ranks_at_32_equal_one_process_at_64(mpi, tmp_path, records):
    db = records / "train_lmdb"
    one = write_job(tmp_path, "one", db, 64)
    two = write_job(tmp_path, "two", db, 32)
    r1 = run([sys.executable, "-m", "netspec", "train", f"--solver={one}"], tmp_path)
    assert r1.returncode == 0, r1.stderr[-2000:]
    # Small buckets: ip1's weights alone, then the rest: two Allreduces per iteration.
    r2 = run(mpirun(2, *launcher(tmp_path, buckets=5000), "train", f"--solver={two}"), tmp_path)
    assert r2.returncode == 0, r2.stdout[-2000:] + r2.stderr[-2000:]
    a = caffemodel(tmp_path / "one" / "mlp_iter_20.caffemodel")
    b = caffemodel(tmp_path / "two" / "mlp_iter_20.caffemodel")
    assert a.keys() == b.keys() == {"ip1", "ip2"}
    for name in a:
        for x, y in zip(a[name], b[name]):
            np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-6)
    first = caffemodel(tmp_path / "one" / "mlp_iter_10.caffemodel")
    moved = max(np.abs(x - y).max() for n in a for x, y in zip(a[n], first[n]))
    assert moved > 1e-2                                   # the weights really changed meanwhile
    # Rank 0 alone logs; the logged losses are the means over both ranks, so they match too.
    assert len(log_pids(r2.stderr)) == 1
    l1, l2 = displayed_losses(r1.stderr), displayed_losses(r2.stderr)
    assert [i for i, _ in l1] == [i for i, _ in l2] == [0, 5, 10, 15]
    np.testing.assert_allclose([v for _, v in l2], [v for _, v in l1], rtol=1e-5)
    assert "Data-parallel training on 2 MPI ranks" in r2.stderr
    assert r2.stderr.count("Snapshotting solver state") == 2


def test_resume_under_mpi_is_exact_with_per_rank_cursors(mpi, tmp_path, records):
    db = records / "train_lmdb"
    full = write_job(tmp_path, "full", db, 16, random=True)       # dropout, random crops and mirrors
    r = run(mpirun(2, sys.executable, "-m", "netspec", "train", f"--solver={full}"), tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    state = tmp_path / "full" / "mlp_iter_10.solverstate"
    _, resume = read_solverstate(str(state))
    ranks = resume["mpi_ranks"]
    positions = [s["layers"]["train/mnist"]["position"] for s in ranks]
    assert positions == [320, 321]                                   # 10 x 2 x 16 records read; rank r at +r
    assert ranks[0]["layers"]["train/mnist"]["rng"] != ranks[1]["layers"]["train/mnist"]["rng"]
    again = write_job(tmp_path, "again", db, 16, random=True)
    r2 = run(mpirun(2, sys.executable, "-m", "netspec", "train", f"--solver={again}", f"--snapshot={state}"),
             tmp_path)
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert "Restoring previous solver status from" in r2.stderr
    a = caffemodel(tmp_path / "full" / "mlp_iter_20.caffemodel")
    b = caffemodel(tmp_path / "again" / "mlp_iter_20.caffemodel")
    for name in a:
        for x, y in zip(a[name], b[name]):
            np.testing.assert_array_equal(x, y)
    assert displayed_losses(r2.stderr) == [(i, v) for i, v in displayed_losses(r.stderr) if i >= 10]


def test_an_error_on_rank_1_ends_the_job_naming_the_rank(mpi, tmp_path, records):
    solver = write_job(tmp_path, "fail", records / "train_lmdb", 16, max_iter=1000, snapshot=5)
    ok, bad = launcher(tmp_path), launcher(tmp_path, fail_at=12)
    tic = time.monotonic()
    r = run(mpirun(1, *ok, "train", f"--solver={solver}") + [":", "-n", "1", *bad, "train", f"--solver={solver}"],
            tmp_path, timeout=60)
    assert time.monotonic() - tic < 30
    assert r.returncode != 0
    assert "netspec: error: rank 1: injected failure at iteration 12" in r.stderr
    assert "Traceback" not in r.stderr
    newest = tmp_path / "fail" / "mlp_iter_10.solverstate"
    assert newest.exists() and not (tmp_path / "fail" / "mlp_iter_15.solverstate").exists()
    read_solverstate(str(newest))


def _agreement_job(tmp_path, records, name, solver_edit=None, net_edit=None):
    """Two folders, a/ (rank 0) and b/ (rank 1), each with solver.prototxt and net.prototxt by those
    relative names; rank 1's copy edited. Returns mpirun's result (each rank started in its folder)."""
    for folder, edit_solver, edit_net in (("a", None, None), ("b", solver_edit, net_edit)):
        job = tmp_path / name / folder
        job.mkdir(parents=True)
        net = NET.format(db=records / "train_lmdb", batch=16, transform="", dropout="")
        solver = SOLVER.format(net="net.prototxt", max_iter=20, snapshot=10, prefix="mlp")
        (job / "net.prototxt").write_text(edit_net(net) if edit_net else net)
        (job / "solver.prototxt").write_text(edit_solver(solver) if edit_solver else solver)
    train = [sys.executable, "-m", "netspec", "train", "--solver=solver.prototxt"]
    cmd = (mpirun(1, "-wdir", str(tmp_path / name / "a"), *train)
           + [":", "-n", "1", "-wdir", str(tmp_path / name / "b"), *train])
    return run(cmd, tmp_path, timeout=90)


@pytest.mark.parametrize("what, solver_edit, net_edit, expected", [
    ("base_lr", lambda s: s.replace("base_lr: 0.05", "base_lr: 0.01"), None,
     "rank 1's solver differs from rank 0's: line 1: 'base_lr: 0.01' where rank 0 has 'base_lr: 0.05'"),
    ("max_iter", lambda s: s.replace("max_iter: 20", "max_iter: 30"), None,
     "rank 1's solver differs from rank 0's: line "),
    ("net", None, lambda n: n.replace("num_output: 32", "num_output: 33"),     # another parameter count
     "rank 1's net differs from rank 0's: line "),
])
def test_ranks_running_another_training_end_the_job_naming_rank_and_difference(mpi, tmp_path, records, what,
                                                                               solver_edit, net_edit, expected):
    tic = time.monotonic()
    r = _agreement_job(tmp_path, records, what, solver_edit, net_edit)
    assert time.monotonic() - tic < 60                    # ended, not hung in a mismatched Allreduce
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if "netspec: error:" in line]
    assert len(errors) == 1, r.stderr[-3000:]
    assert "the MPI ranks do not run the same training: " + expected in errors[0], errors[0]
    assert "Traceback" not in r.stderr and "Iteration 0" not in r.stderr     # refused before training
    assert not list((tmp_path / what / "a").glob("mlp_iter_*"))


def wait_for_log(proc, text, times=1, timeout=60):
    seen, lines, deadline = 0, [], time.monotonic() + timeout
    while seen < times and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:                                    # mpirun ended
            break
        lines.append(line)
        seen += text in line
    assert seen == times, f"training did not get going: {''.join(lines[-20:])}"


def _rank_pid(job, rank):
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except OSError:
            continue
        if env.get(b"NETSPEC_TEST_JOB") == job.encode() and \
                (env.get(b"OMPI_COMM_WORLD_RANK") or env.get(b"PMI_RANK")) == str(rank).encode():
            return int(pid)
    return None


def test_kill_9_of_a_rank_ends_the_job_and_the_last_snapshot_loads(mpi, tmp_path, records):
    solver = write_job(tmp_path, "kill", records / "train_lmdb", 16, max_iter=10 ** 6, snapshot=20)
    job = uuid.uuid4().hex
    proc = subprocess.Popen(mpirun(2, sys.executable, "-m", "netspec", "train", f"--solver={solver}"),
                            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=mpi_env(NETSPEC_TEST_JOB=job))
    try:
        wait_for_log(proc, "Snapshotting solver state", times=3)
        victim = _rank_pid(job, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        tic = time.monotonic()
        proc.stderr.read()
        code = proc.wait(timeout=30)
        assert time.monotonic() - tic < 15
        assert code != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    states = sorted((tmp_path / "kill").glob("*.solverstate"), key=lambda p: int(re.findall(r"\d+", p.name)[-1]))
    newest = states[-1]
    s = Solver(solver)
    s.param.max_iter = int(re.findall(r"\d+", newest.name)[-1]) + 2
    s.param.snapshot = 0
    s.solve(str(newest))                                              # loads and trains on
    assert s.iter == s.param.max_iter


def test_sigint_to_one_rank_stops_every_rank_with_a_snapshot(mpi, tmp_path, records):
    solver = write_job(tmp_path, "stop", records / "train_lmdb", 16, max_iter=10 ** 6, snapshot=0)
    job = uuid.uuid4().hex
    proc = subprocess.Popen(mpirun(2, sys.executable, "-m", "netspec", "train", f"--solver={solver}"),
                            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=mpi_env(NETSPEC_TEST_JOB=job))
    try:
        wait_for_log(proc, "Iteration 20 (")
        os.kill(_rank_pid(job, 1), signal.SIGINT)          # the quiet rank: its request reaches rank 0
        rest = proc.stderr.read()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Optimization stopped early." in rest
    state = next((tmp_path / "stop").glob("*.solverstate"))
    _, resume = read_solverstate(str(state))
    assert len(resume["mpi_ranks"]) == 2
