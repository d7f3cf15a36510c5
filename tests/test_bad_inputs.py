"""Bad input never gives a traceback: every case in tests/bad_inputs/ gets one clear line.

tests/bad_inputs/cases.yaml lists the cases (its header explains the fields). Each
case folder is copied to a temporary directory, where the binary fixtures it
needs (LMDBs, .caffemodel, .solverstate) are generated; then the case runs

- through the CLI: `python -m netspec ...` with the copy as working directory;
  the exit code, the last stderr line and the absence of a traceback are checked;
- through the Python API: the listed calls (Net, Solver, copy_from, restore, ...)
  run in the copy; the last one must raise NetspecError with the same message.

CLI runs cost ~0.5 s of start-up each: the default suite runs the CLI form of the
cases marked cli_default (at least one per kind) and `-m slow` all of them, and
the selected runs start together, a few subprocesses at a time, the first time a
CLI test asks for its result.
"""
import contextlib
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import yaml

from netspec.errors import NetspecError

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CASES_DIR = os.path.join(HERE, "bad_inputs")
MANIFEST = os.path.join(CASES_DIR, "cases.yaml")
CLI_PREFIX = {1: "netspec: error: ", 2: "Error: "}      # exit 2 is click's usage error format
CLI_TIMEOUT = 120
FIELDS = {"name", "dir", "kind", "cli", "api", "exit", "error", "generate", "cli_default"}


def load_manifest():
    with open(MANIFEST, encoding="utf-8") as f:
        manifest = yaml.safe_load(f)
    return manifest["cases"]


CASES = load_manifest()


# ------------------------------------------------------------------ fixtures the cases need

@contextlib.contextmanager
def working_directory(path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def gen_caffemodel(model, out, phase="TEST"):
    """Weights of `model`, freshly initialised by its fillers."""
    from netspec.net import Net
    Net(model, phase).save(out)


def gen_solverstate(solver, iters):
    """Run `solver` for `iters` iterations; its own snapshot settings write the files."""
    from netspec.solver import Solver
    s = Solver(solver)
    s.step(iters)


def gen_truncate(file, keep):
    """Keep the first fraction `keep` of the file's bytes."""
    with open(file, "rb") as f:
        data = f.read()
    with open(file, "wb") as f:
        f.write(data[:int(len(data) * keep)])


def gen_overwrite(file, offset, hex):
    """Overwrite bytes at `offset` (negative counts from the end) with the given hex bytes."""
    with open(file, "rb") as f:
        data = bytearray(f.read())
    patch = bytes.fromhex(hex)
    start = offset % len(data)
    data[start:start + len(patch)] = patch
    with open(file, "wb") as f:
        f.write(bytes(data))


def gen_unseal(file):
    """Drop netspec's integrity record, leaving the file as Caffe would have written it."""
    from netspec.integrity import unseal
    with open(file, "rb") as f:
        payload, sealed = unseal(f.read(), file)
    assert sealed, f"{file} has no integrity record"
    with open(file, "wb") as f:
        f.write(payload)


def gen_delete(file):
    os.remove(file)


def gen_lmdb(out, count, shape=(1, 4, 4), odd=None, raw=None):
    """An LMDB of `count` uint8 Datums of `shape` (labels i % 2), keys in order.

    odd: {index: [C, H, W]} gives some records another shape; raw: {index: hex} stores
    those bytes instead of a Datum.
    """
    from netspec.datasets.lmdb_io import array_to_datum, write_lmdb_atomically
    odd, raw = odd or {}, raw or {}
    records = []
    for i in range(count):
        if i in raw:
            value = bytes.fromhex(raw[i])
        else:
            s = tuple(odd.get(i, shape))
            pixels = (np.arange(int(np.prod(s))) % 256).astype(np.uint8).reshape(s)
            value = array_to_datum(pixels, label=i % 2).SerializeToString()
        records.append((f"{i:08d}", value))
    if count == 0:
        import lmdb
        lmdb.open(out, map_size=1 << 20).close()      # a real LMDB holding no records
        return
    write_lmdb_atomically(out, records)


GENERATORS = {"caffemodel": gen_caffemodel, "solverstate": gen_solverstate, "truncate": gen_truncate,
              "overwrite": gen_overwrite, "delete": gen_delete, "unseal": gen_unseal, "lmdb": gen_lmdb}


def prepare(case, root):
    """Copy the case folder under `root` and generate its fixtures there; the copy's path."""
    src = os.path.join(CASES_DIR, case.get("dir", case["name"]))
    work = os.path.join(root, case["name"])
    shutil.copytree(src, work)
    with working_directory(work):
        for spec in case.get("generate") or []:
            (name, args), = spec.items()
            GENERATORS[name](**args) if isinstance(args, dict) else GENERATORS[name](args)
    return work


# ------------------------------------------------------------------ the Python API side

def _phase(name):
    import netspec
    return {"TRAIN": netspec.TRAIN, "TEST": netspec.TEST}[name]


class ApiRun:
    """Runs a case's API steps, keeping the objects they make (so teardown can stop data threads)."""

    def __init__(self):
        self.net = None
        self.solver = None

    def step(self, op, arg):
        from netspec import schema
        from netspec.net import Net
        from netspec.solver import Solver
        if op == "read_net":
            schema.read_net(arg)
        elif op == "read_solver":
            schema.read_solver(arg)
        elif op == "net":
            model, phase = arg
            self.net = Net(model, _phase(phase))
        elif op == "copy_from":
            self.net.copy_from(arg)
        elif op == "reshape":
            for blob, shape in arg.items():
                self.net.blobs[blob].reshape(*shape)
        elif op == "forward":
            for _ in range(arg):
                self.net.forward()
        elif op == "forward_backward":
            for _ in range(arg):
                self.net.forward_backward()
        elif op == "solver":
            self.solver = Solver(arg)
            self.net = self.solver.net
        elif op == "restore":
            self.solver.restore(arg)
        elif op == "step":
            self.solver.step(arg)
        else:
            raise ValueError(f"cases.yaml: unknown API step '{op}'")

    def close(self):
        if self.solver:
            self.solver.close()
        if self.net:
            self.net.close()


def _api_params():
    return [pytest.param(c, id=c["name"]) for c in CASES if c.get("api")]


@pytest.mark.parametrize("case", _api_params())
def test_api(case, tmp_path, monkeypatch):
    work = prepare(case, tmp_path)
    monkeypatch.chdir(work)
    before = set(sys.modules)
    run = ApiRun()
    steps = [next(iter(s.items())) for s in case["api"]]
    try:
        for op, arg in steps[:-1]:
            run.step(op, arg)
        with pytest.raises(NetspecError) as info:
            run.step(*steps[-1])
    finally:
        run.close()
        # User layer modules live in the case folder: forget them so no other case sees them.
        for name in set(sys.modules) - before:
            path = getattr(sys.modules[name], "__file__", None) or ""
            if path.startswith(str(tmp_path)):
                del sys.modules[name]
    assert str(info.value) == case["error"]
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ the CLI side

def run_cli(args, cwd):
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run([sys.executable, "-m", "netspec", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT)


def _cli_params():
    """Every case with a CLI form; those without cli_default run only with `-m slow` (start-up costs)."""
    return [pytest.param(c, id=c["name"], marks=[] if c.get("cli_default") else [pytest.mark.slow])
            for c in CASES if c.get("cli")]


@pytest.fixture(scope="session")
def cli_runs(request, tmp_path_factory):
    """Start every selected CLI case at once (a few at a time); name -> Future of CompletedProcess."""
    wanted = {item.callspec.params["case"]["name"] for item in request.session.items
              if getattr(item, "originalname", None) == "test_cli" and hasattr(item, "callspec")}
    root = tmp_path_factory.mktemp("cli_cases")
    pool = ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2)))
    futures = {}
    for case in CASES:
        if case["name"] in wanted:
            work = prepare(case, root)
            futures[case["name"]] = pool.submit(run_cli, case["cli"], work)
    yield futures
    pool.shutdown(wait=True)


@pytest.mark.parametrize("case", _cli_params())
def test_cli(case, cli_runs):
    proc = cli_runs[case["name"]].result()
    code = case.get("exit", 1)
    lines = proc.stderr.rstrip("\n").splitlines()
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines, f"no stderr; exit code {proc.returncode}"
    assert lines[-1] == CLI_PREFIX[code] + case["error"]
    assert proc.returncode == code, proc.stderr[-2000:]


# ------------------------------------------------------------------ the corpus itself

def test_manifest_is_well_formed():
    names = [c["name"] for c in CASES]
    assert len(names) == len(set(names)), "case names must be unique"
    assert len(CASES) >= 60
    for c in CASES:
        assert set(c) <= FIELDS, f"{c['name']}: unknown fields {set(c) - FIELDS}"
        assert os.path.isdir(os.path.join(CASES_DIR, c.get("dir", c["name"]))), c["name"]
        assert c["kind"] and c.get("error"), c["name"]
        assert c.get("cli") or c.get("api"), c["name"]
        assert c.get("exit", 1) in (1, 2), c["name"]
        assert (c.get("exit", 1) == 2) == (not c.get("api")), f"{c['name']}: only usage errors lack an API form"
        for spec in c.get("generate") or []:
            assert len(spec) == 1 and next(iter(spec)) in GENERATORS, c["name"]
    # Every kind keeps at least one CLI run in the default suite.
    default = {c["kind"] for c in CASES if c.get("cli") and c.get("cli_default")}
    assert default == {c["kind"] for c in CASES if c.get("cli")}
    # Every folder is used by some case.
    used = {c.get("dir", c["name"]) for c in CASES}
    folders = {d for d in os.listdir(CASES_DIR) if os.path.isdir(os.path.join(CASES_DIR, d))}
    assert folders - {"__pycache__"} == used
