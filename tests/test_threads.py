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


def test_even_count_is_the_largest_power_of_two_not_above():
    assert [threads.even_count(m) for m in (-1, 0, 1, 2, 3, 4, 5, 7, 8, 9)] == [1, 1, 1, 2, 2, 4, 4, 4, 8, 8]


def test_late_wake_ups_carry_over_harmlessly(restore_threads):
    """Calls in quick succession wake a worker that may not have taken the last wake-up yet."""
    import time
    threads.set_threads(2)
    for k in range(300):
        seen = []
        threads.parallel_for(2 + k % 3, lambda i: seen.append(i) or (k % 7 == 0 and time.sleep(0.0001)))
        assert sorted(seen) == list(range(2 + k % 3))


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


# ---- the same bytes at any thread count --------------------------------------------------------

# Every layer that shares its work among threads, in shapes that cut into several chunks: a
# stacked convolution with padding (big maps), batch-normalised and scaled; pooling; a grouped
# convolution on small maps (the side-by-side engine, its rows in blocks); a 1x1 convolution; LRN
# both ways; Concat, Eltwise, Split (fan-out), InnerProduct big enough to cut, then a loss.
THREADED_NET = """
name: "threaded"
force_backward: true
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: BATCH dim: 3 dim: 24 dim: 24 } shape { dim: BATCH } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 48 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.1 }
                            bias_filler { type: "constant" value: 0.1 } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 64 group: 2 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "norm2" type: "LRN" bottom: "conv2" top: "norm2" lrn_param { local_size: 5 alpha: 0.01 beta: 0.75 } }
layer { name: "norm2w" type: "LRN" bottom: "conv2" top: "norm2w"
        lrn_param { local_size: 3 alpha: 0.01 beta: 0.75 norm_region: WITHIN_CHANNEL } }
layer { name: "conv3" type: "Convolution" bottom: "conv1" top: "conv3"
        convolution_param { num_output: 64 kernel_size: 1 weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "pool3" type: "Pooling" bottom: "conv3" top: "pool3" pooling_param { pool: AVE kernel_size: 4 stride: 2 pad: 1 } }
layer { name: "cat" type: "Concat" bottom: "norm2" bottom: "pool3" top: "cat" }
layer { name: "sum" type: "Eltwise" bottom: "norm2w" bottom: "norm2" top: "sum" eltwise_param { coeff: 1 coeff: -0.5 } }
layer { name: "cat2" type: "Concat" bottom: "cat" bottom: "sum" top: "cat2" }
layer { name: "relu2" type: "ReLU" bottom: "cat2" top: "cat2" }
layer { name: "ip" type: "InnerProduct" bottom: "cat2" top: "ip"
        inner_product_param { num_output: 256 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def _run_threaded_net(n, phase, batch):
    import textwrap
    import numpy as np
    import netspec
    from netspec.proto import caffe_pb2
    from netspec.schema import parse_prototxt
    netspec.set_threads(n)
    netspec.set_random_seed(3)
    text = textwrap.dedent(THREADED_NET).replace("BATCH", str(batch))
    net = netspec.Net(parse_prototxt(text, caffe_pb2.NetParameter()), phase)
    rng = np.random.default_rng(0)
    net.blobs["data"].data[...] = rng.standard_normal(net.blobs["data"].shape)
    net.blobs["label"].data[...] = rng.integers(0, 200, batch)
    out = {}
    for it in range(2):     # twice: the second pass reuses every cached buffer
        net.clear_param_diffs()
        net.forward()
        net.backward()
    for name, blob in net.blobs.items():
        out[name] = (blob.data.tobytes(), blob.diff.tobytes())
    for name, blobs in net.params.items():
        for j, b in enumerate(blobs):
            out[f"{name}/{j}"] = (b.data.tobytes(), b.diff.tobytes())
    engines = {type(rec.layer.engine).__name__ for rec in net.records if getattr(rec.layer, "engine", None)}
    return out, engines


@pytest.mark.parametrize("phase, batch", [("TRAIN", 8), ("TEST", 8), ("TRAIN", 1)])
def test_forward_backward_and_parameter_diffs_are_the_same_bytes_at_1_2_3_threads(phase, batch, restore_threads,
                                                                                    monkeypatch):
    """Batch 8 cuts by samples; batch 1 cuts the stacked convolutions' GEMMs by rows and their
    im2col/col2im by channels (chunks of 4K elements here, so that this net's small maps are cut)."""
    import netspec
    from netspec.layers import conv_engines, native
    monkeypatch.setattr(conv_engines, "IM2COL_CHUNK", 1 << 12)
    cut = []
    real = conv_engines.StackedConv.channel_chunks
    monkeypatch.setattr(conv_engines.StackedConv, "channel_chunks",
                        lambda self, part: cut.append(len(real(self, part))) or real(self, part))
    one, engines = _run_threaded_net(1, getattr(netspec, phase), batch)
    # The engines this net is meant to reach (when the compiled kernels are built).
    if native.ENABLED:
        # Batch 1: the small maps go stacked too (side by side needs several samples).
        assert ({"StackedConv", "PointwiseConv"} | ({"ColumnConv"} if batch > 1 else set())) <= engines
    assert conv_engines.CHUNKS > 1
    if native.ENABLED and batch == 1:
        assert max(cut) > 1
    for n in (2, 3):
        other, _ = _run_threaded_net(n, getattr(netspec, phase), batch)
        assert other.keys() == one.keys()
        different = [name for name in one if one[name] != other[name]]
        assert not different, f"{n} threads differ from 1 in {different}"


def _run_lenet(n):
    import numpy as np
    import netspec
    from netspec.proto import caffe_pb2
    from netspec.schema import read_net
    netspec.set_threads(n)
    netspec.set_random_seed(5)
    param = read_net(MODEL)     # batch 64: LeNet's convolutions are cut by samples
    param.force_backward = True
    net = netspec.Net(param, netspec.TRAIN)
    rng = np.random.default_rng(1)
    net.blobs["data"].data[...] = rng.standard_normal(net.blobs["data"].shape)
    net.clear_param_diffs()
    net.forward()
    net.blobs["prob"].diff[...] = rng.standard_normal(net.blobs["prob"].shape)
    net.backward()
    out = {f"{name}/{j}": b.diff.tobytes() for name, blobs in net.params.items() for j, b in enumerate(blobs)}
    out.update((name, (b.data.tobytes(), b.diff.tobytes())) for name, b in net.blobs.items())
    return out, net


def test_lenet_at_batch_64_is_the_same_bytes_at_1_2_3_threads(restore_threads):
    from netspec.layers import conv_columns
    one, net = _run_lenet(1)
    engine = net.layer_dict["conv2"].engine
    if isinstance(engine, conv_columns.ColumnConv):     # the compiled kernels are built
        assert len(engine.sample_chunks(0, 64)) > 1
    for n in (2, 3):
        other, _ = _run_lenet(n)
        different = [name for name in one if one[name] != other[name]]
        assert not different, f"{n} threads differ from 1 in {different}"


def test_inner_product_blocks_are_a_power_of_two_of_at_least_min_block():
    from netspec.layers import common
    for outputs in (128, 255, 256, 500, 1000, 4096):
        layer = common.InnerProduct.__new__(common.InnerProduct)
        layer.M, layer.K, layer.num_output = 64, 800, outputs
        blocks = layer._blocks(outputs)
        assert blocks[0][0] == 0 and blocks[-1][1] == outputs
        assert len(blocks) & (len(blocks) - 1) == 0 and len(blocks) <= common.CHUNKS
        assert len(blocks) == 1 or min(b - a for a, b in blocks) >= common.MIN_BLOCK
        assert 2 * len(blocks) > min(common.CHUNKS, outputs // common.MIN_BLOCK)   # as many as allowed


BATCH_ONE_POINTWISE = """
name: "pointwise"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 64 dim: 24 dim: 24 } } }
layer { name: "big" type: "Convolution" bottom: "data" top: "big"
        convolution_param { num_output: 256 kernel_size: 1 weight_filler { type: "gaussian" std: 0.1 }
                            bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "big" top: "big" }
layer { name: "small" type: "Convolution" bottom: "data" top: "small"
        convolution_param { num_output: 64 kernel_size: 1 weight_filler { type: "gaussian" std: 0.1 } } }
"""


def test_batch_one_cuts_only_products_that_pay_for_the_hand_off(monkeypatch, restore_threads):
    """At batch 1 the GEMM of 256 x 64 x 576 (9.4M multiply-adds) is cut by rows, the one of
    64 x 64 x 576 (2.4M), which row_blocks would cut in two, runs whole: the same bytes at 1, 2 and
    3 threads, and the float64 products' values."""
    import numpy as np
    import netspec
    from netspec.layers import conv_engines
    from netspec.proto import caffe_pb2
    from netspec.schema import parse_prototxt
    chunks = []
    real = conv_engines.parallel_for
    monkeypatch.setattr(conv_engines, "parallel_for", lambda n, fn: (chunks.append(n), real(n, fn)))
    tops = []
    for n in (1, 2, 3):
        netspec.set_threads(n)
        netspec.set_random_seed(4)
        net = netspec.Net(parse_prototxt(BATCH_ONE_POINTWISE, caffe_pb2.NetParameter()), netspec.TEST)
        net.blobs["data"].data[...] = np.random.default_rng(2).standard_normal(net.blobs["data"].shape)
        del chunks[:]
        net.forward()
        tops.append((net.blobs["big"].data.tobytes(), net.blobs["small"].data.tobytes()))
        assert [type(net.layer_dict[name].engine).__name__ for name in ("big", "small")] == ["PointwiseConv"] * 2
        assert net.layer_dict["big"].engine.by_rows()
        assert chunks == [len(conv_engines.row_blocks(net.layer_dict["big"])), 1] and chunks[0] > 1
        assert len(conv_engines.row_blocks(net.layer_dict["small"])) == 2
    assert tops[1] == tops[0] and tops[2] == tops[0]
    x = net.blobs["data"].data.astype(np.float64).reshape(64, -1)
    big, small = net.layer_dict["big"], net.layer_dict["small"]
    y = np.maximum(big.blobs[0].data.reshape(256, 64) @ x + big.blobs[1].data[:, None], 0)
    z = small.blobs[0].data.reshape(64, 64) @ x + small.blobs[1].data[:, None]
    assert np.abs(net.blobs["big"].data.reshape(256, -1) - y).max() < 1e-5 * np.abs(y).max()
    assert np.abs(net.blobs["small"].data.reshape(64, -1) - z).max() < 1e-5 * np.abs(z).max()


def _fresh_pool(monkeypatch, spin):
    """A 2-thread pool made after NETSPEC_SPIN_US=spin (the pool reads it when it is made)."""
    monkeypatch.setenv(threads.SPIN_ENV, spin)
    threads.set_threads(1)      # closes any pool: the next call at 2 threads makes a new one
    threads.set_threads(2)


@pytest.mark.parametrize("spin", ["0", "200", "5000"])
def test_pool_gives_every_chunk_once_spinning_or_not(spin, monkeypatch, restore_threads):
    import time
    _fresh_pool(monkeypatch, spin)
    names = set()
    for k in range(200):
        seen = []

        def chunk(i):
            names.add(threading.current_thread().name)
            seen.append(i)
            if k % 5 == 0:
                time.sleep(0.0002)      # lets the worker take some chunks

        threads.parallel_for(2 + k % 5, chunk)
        assert sorted(seen) == list(range(2 + k % 5))
        if k % 11 == 0:
            time.sleep(0.001)           # past a short spin: the worker sleeps on its lock again
    assert len(names) == 2
    assert threads._pool.spin_us == (float(spin) if threads._spin_wait else 0.0)


def test_spin_setting_is_checked(monkeypatch):
    monkeypatch.delenv(threads.SPIN_ENV, raising=False)
    assert threads.spin_microseconds() == threads.DEFAULT_SPIN_US
    monkeypatch.setenv(threads.SPIN_ENV, " 50 ")
    assert threads.spin_microseconds() == 50
    for bad in ("fast", "-1", "inf", "nan"):
        monkeypatch.setenv(threads.SPIN_ENV, bad)
        with pytest.raises(NetspecError, match="NETSPEC_SPIN_US"):
            threads.spin_microseconds()


def test_spin_wait_returns_when_the_word_changes_or_the_time_is_up():
    import time
    import numpy as np
    if threads._spin_wait is None:
        pytest.skip("compiled kernels not built")
    word = np.zeros(1, np.int32)
    start = time.perf_counter()
    assert threads._spin_wait(word, 0, 2000.0, False) is False      # never changed: times out
    assert threads._spin_wait(word, 5, 2000.0, True) is False
    assert time.perf_counter() - start >= 0.004
    assert threads._spin_wait(word, 1, 2000.0, False) is True       # already differs from 1
    assert threads._spin_wait(word, 0, 2000.0, True) is True        # already equals 0
    setter = threading.Timer(0.01, lambda: word.__setitem__(0, 7))
    setter.start()
    start = time.perf_counter()
    assert threads._spin_wait(word, 7, 5e6, True) is True           # another thread sets it
    assert time.perf_counter() - start < 2.0
    setter.join()
    with pytest.raises(ValueError, match="int32"):
        threads._spin_wait(np.zeros(1, np.int8), 0, 1.0, True)
    with pytest.raises(BufferError):
        threads._spin_wait(b"abcd", 0, 1.0, True)                    # read-only
