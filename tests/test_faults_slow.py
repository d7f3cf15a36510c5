"""The long fault runs (`-m slow`): SIGKILL at random moments (mid-snapshot included) and SIGTERM,
then exact resume; a full disk on a small tmpfs; several runs on one prefix; FIFO and device inputs;
memory bombs under `ulimit -v`. Each test prints its counts (pytest -s shows them)."""
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from test_crash_safety import (check_every_snapshot_loads, final_weights, latest_state, run, solver_file,  # noqa: F401
                               workdir)
from test_bounded_memory import alias_bomb

pytestmark = pytest.mark.slow
MAX_ITER = 400


def _reference(workdir):
    ref = run(workdir, ["--solver=" + solver_file(workdir, "ref.prototxt", max_iter=MAX_ITER, snapshot=1,
                                                  prefix="ref/mlp")])
    assert ref.wait(timeout=600) == 0
    return final_weights(workdir / "ref" / f"mlp_iter_{MAX_ITER}.caffemodel")


def _resume_args(workdir, solver):
    state = latest_state(workdir / "snap") if (workdir / "snap").exists() else None
    return ["--solver=" + solver] + (["--snapshot=snap/" + state.name] if state else [])


def _assert_same(expected, got):
    assert expected.keys() == got.keys()
    for name in expected:
        for a, b in zip(expected[name], got[name]):
            np.testing.assert_array_equal(a, b)


def _no_debris(folder):
    return [n for n in os.listdir(folder) if ".netspec-tmp." in n]


@pytest.mark.parametrize("sig,count", [(signal.SIGKILL, 24), (signal.SIGTERM, 8)])
def test_killed_again_and_again_then_resumed_bit_identical(workdir, sig, count):
    expected = _reference(workdir)
    solver = solver_file(workdir, "solver.prototxt", max_iter=MAX_ITER, snapshot=1)   # a snapshot every iteration
    chooser, kills, checked, statuses = random.Random(sig * 1000 + count), 0, set(), []
    while kills < count:
        proc = run(workdir, _resume_args(workdir, solver), watch=True)
        for line in proc.stderr:
            if "Iteration" in line:
                break
        time.sleep(chooser.random() * 0.08)
        if proc.poll() is not None:
            break
        proc.send_signal(sig)
        proc.stderr.read()
        statuses.append(proc.wait(timeout=120))
        kills += 1
        check_every_snapshot_loads(workdir / "snap", solver, workdir, checked)
    final = run(workdir, _resume_args(workdir, solver))
    assert final.wait(timeout=600) == 0
    _assert_same(expected, final_weights(workdir / "snap" / f"mlp_iter_{MAX_ITER}.caffemodel"))
    assert _no_debris(workdir / "snap") == []
    if sig == signal.SIGTERM:
        assert set(statuses) == {0}                     # snapshot, then a clean stop
    print(f"\n{signal.Signals(sig).name}: {kills} kills, {len(checked)} snapshots loaded, resumed bit-identical")
    assert kills >= count - 2


@pytest.fixture
def small_disk(workdir):
    mount = workdir / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                                           capture_output=True).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_at_a_snapshot_keeps_the_previous_one_and_says_so(workdir, small_disk):
    # A snapshot pair of this net is ~12 KB: a few fit in 64 KB, then the disk is full.
    solver = solver_file(workdir, "s.prototxt", max_iter=200, snapshot=1, prefix="disk/mlp")
    r = subprocess.run([sys.executable, "-m", "netspec", "train", "--solver=" + solver], cwd=workdir,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert "cannot write (No space left on device); any previous file there is unchanged" in last, last
    assert "Traceback" not in r.stderr
    assert _no_debris(small_disk) == []
    states = sorted(small_disk.glob("*.solverstate"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    complete = [s for s in states if (small_disk / (s.stem + ".caffemodel")).exists()]
    assert complete
    from netspec.snapshot import read_solverstate
    for s in complete:
        read_solverstate(str(s))                    # every pair on the full disk is whole
    # Room again: resume from the last whole pair.
    shutil.copytree(small_disk, workdir / "roomy")
    last_state = complete[-1].name
    (workdir / "r.prototxt").write_text((workdir / solver).read_text().replace('"disk/mlp"', '"roomy/mlp"'))
    r = subprocess.run([sys.executable, "-m", "netspec", "train", "--solver=r.prototxt",
                        "--snapshot=roomy/" + last_state], cwd=workdir, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-1500:]
    print(f"\nfull disk: failed cleanly after {len(complete)} whole snapshot pairs; resumed from {last_state}")


def test_several_runs_on_one_prefix_only_one_trains(workdir):
    solver = solver_file(workdir, "s.prototxt", max_iter=10 ** 6, snapshot=10)   # trains until killed
    procs = [subprocess.Popen([sys.executable, "-m", "netspec", "train", "--solver=" + solver], cwd=workdir,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    deadline, refused = time.time() + 600, []
    while time.time() < deadline and len(refused) < 3:
        for p in procs:
            if p not in refused and p.poll() is not None:
                refused.append(p)
        time.sleep(0.2)
    training = [p for p in procs if p not in refused]
    assert len(refused) == 3 and len(training) == 1 and training[0].poll() is None
    for p in refused:
        err = p.stderr.read()
        assert p.returncode == 1 and "is in use by another training (pid" in err.strip().splitlines()[-1], err[-500:]
        assert f"pid {training[0].pid}" in err and "Traceback" not in err
    training[0].kill()
    training[0].wait()
    print("\nfour runs on one prefix at once: 1 trained, 3 refused naming its pid")


def _cli(workdir, args, timeout=60, limit=None, stdin=subprocess.DEVNULL):
    def cap():
        if limit:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return subprocess.run([sys.executable, "-m", "netspec", *args], cwd=workdir, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=cap, stdin=stdin)


def test_fifo_and_device_inputs_never_hang(workdir):
    os.mkfifo(workdir / "pipe")
    solver_file(workdir, "s.prototxt", max_iter=2, snapshot=0)
    cases = []
    for bad in ("pipe", "/dev/zero", "/dev/urandom", "/dev/null"):
        cases += [["time", f"--model={bad}", "--iterations=1"], ["train", f"--solver={bad}"],
                  ["test", "--model=net.prototxt", f"--weights={bad}", "--iterations=1"],
                  ["train", "--solver=s.prototxt", f"--snapshot={bad}"],
                  ["convert_mnist", bad, bad, "out_lmdb"], ["compute_image_mean", bad, "m.binaryproto"],
                  ["convert", bad, "x.yaml"], ["parse_log", bad]]
    for args in cases:
        r = _cli(workdir, args, timeout=60)
        assert r.returncode == 1, (args, r.stderr[-500:])
        assert r.stderr.strip().splitlines()[-1].startswith("netspec: error: ") and "Traceback" not in r.stderr
    print(f"\n{len(cases)} FIFO/device inputs: each refused with one line, none hung")


def test_memory_bombs_under_ulimit_end_with_one_line(workdir):
    (workdir / "bomb.yaml").write_text(alias_bomb())
    import gzip
    with gzip.open(workdir / "bomb-images.gz", "wb", compresslevel=1) as f:
        f.write((2051).to_bytes(4, "big") + (60000).to_bytes(4, "big") + (28).to_bytes(4, "big")
                + (28).to_bytes(4, "big"))
        for _ in range(512):                       # 512 MB of zeros behind a header promising 47 MB
            f.write(bytes(1 << 20))
    with gzip.open(workdir / "labels.gz", "wb") as f:
        f.write((2049).to_bytes(4, "big") + (60000).to_bytes(4, "big") + bytes(60000))
    (workdir / "huge.prototxt").write_text("""
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 64 dim: 3 dim: 1024 dim: 1024 } } }
    layer { name: "a" type: "ReLU" bottom: "data" top: "a" }
    layer { name: "b" type: "ReLU" bottom: "a" top: "b" }
    layer { name: "c" type: "ReLU" bottom: "b" top: "c" }
    layer { name: "d" type: "ReLU" bottom: "c" top: "d" }
    """)
    limit = 3 << 30
    cases = [(["time", "--model=bomb.yaml", "--iterations=1"], "alias bomb"),
             (["convert_mnist", "bomb-images.gz", "labels.gz", "out_lmdb"], "extra data after the last record"),
             (["time", "--model=huge.prototxt", "--iterations=1"], "largest layers")]
    for args, expected in cases:
        r = _cli(workdir, args, timeout=300, limit=limit)
        last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
        assert r.returncode == 1 and expected in last, (args, r.returncode, r.stderr[-800:])
        assert "Traceback" not in r.stderr
    print(f"\n{len(cases)} memory bombs under ulimit -v {limit >> 30} GiB: each ended with one line")
