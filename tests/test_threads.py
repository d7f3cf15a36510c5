"""netspec/threads.py: the thread count, parallel_for, and the CLI's --threads / NETSPEC_THREADS."""
import os
import subprocess
import sys
import threading

import pytest

from netspec import threads
from netspec.errors import NetspecError


@pytest.fixture
def restore_threads():
    before = threads.get_threads()
    yield
    threads.set_threads(before)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_parallel_for_runs_every_chunk_once(n, restore_threads):
    threads.set_threads(n)
    seen = []
    lock = threading.Lock()

    def chunk(i):
        with lock:
            seen.append(i)

    for count in (0, 1, 2, 7, 50):
        seen.clear()
        threads.parallel_for(count, chunk)
        assert sorted(seen) == list(range(count))


def test_parallel_for_uses_the_workers(restore_threads):
    threads.set_threads(2)
    names = set()
    barrier = threading.Barrier(2, timeout=10)

    def chunk(i):
        names.add(threading.current_thread().name)
        barrier.wait()      # both chunks at once: only possible on two threads

    threads.parallel_for(2, chunk)
    assert len(names) == 2


def test_first_error_is_raised_and_the_pool_still_works(restore_threads):
    threads.set_threads(2)

    def chunk(i):
        if i == 3:
            raise ValueError("chunk 3 failed")

    with pytest.raises(ValueError, match="chunk 3 failed"):
        threads.parallel_for(8, chunk)
    out = [0] * 4
    threads.parallel_for(4, lambda i: out.__setitem__(i, i + 1))
    assert out == [1, 2, 3, 4]


def test_nested_calls_run_in_the_calling_thread(restore_threads):
    threads.set_threads(2)
    out = [[0] * 3 for _ in range(4)]

    def inner(i):
        threads.parallel_for(3, lambda j: out[i].__setitem__(j, i * 10 + j))

    threads.parallel_for(4, inner)
    assert out == [[i * 10 + j for j in range(3)] for i in range(4)]


def test_spans_cover_the_range_evenly():
    assert threads.spans(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert threads.spans(2, 8) == [(0, 1), (1, 2)]
    assert threads.spans(0, 4) == [(0, 0)]
    for total in range(0, 30):
        for parts in range(1, 9):
            s = threads.spans(total, parts)
            assert s[0][0] == 0 and s[-1][1] == total
            assert all(a[1] == b[0] for a, b in zip(s, s[1:]))
            lengths = [b - a for a, b in s]
            assert max(lengths) - min(lengths) <= 1


def test_counts_are_checked(monkeypatch):
    with pytest.raises(NetspecError, match="at least 1"):
        threads.set_threads(0)
    monkeypatch.setenv(threads.ENV, "two")
    with pytest.raises(NetspecError, match="NETSPEC_THREADS='two'"):
        threads.default_threads()
    monkeypatch.setenv(threads.ENV, " 3 ")
    assert threads.default_threads() == 3
    monkeypatch.delenv(threads.ENV)
    assert threads.default_threads() == len(os.sched_getaffinity(0))


def test_blas_is_held_to_one_thread(restore_threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    threads.set_threads(2)
    blas = [p for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
    assert blas and all(p["num_threads"] == 1 for p in blas)


def test_api_names():
    import netspec
    import caffe
    assert netspec.set_threads is threads.set_threads and netspec.get_threads is threads.get_threads
    assert caffe.set_threads is threads.set_threads


def _run(args, env_threads=None, cwd=None):
    env = dict(os.environ)
    env.pop(threads.ENV, None)
    if env_threads is not None:
        env[threads.ENV] = env_threads
    return subprocess.run([sys.executable, "-m", "netspec", *args], capture_output=True, text=True, timeout=120,
                          env=env, cwd=cwd)


MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models/lenet/lenet.prototxt")


def test_cli_threads_flag_and_environment():
    ok = _run(["time", f"--model={MODEL}", "--iterations=1", "--phase=TEST", "--threads=3"])
    assert ok.returncode == 0, ok.stderr
    bad = _run(["time", f"--model={MODEL}", "--iterations=1", "--threads=0"])
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        "netspec: error: --threads='0': the thread count must be a whole number of at least 1"]
    bad_env = _run(["time", f"--model={MODEL}", "--iterations=1"], env_threads="lots")
    assert bad_env.returncode == 1 and "NETSPEC_THREADS='lots'" in bad_env.stderr
    assert "Traceback" not in bad.stderr + bad_env.stderr
