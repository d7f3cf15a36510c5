"""benchmarks/bench_models.py's core on LeNet: one training iteration and its GEMM floor (no timing asserts)."""
import os
import sys

import numpy as np
import pytest

from netspec.datasets.lmdb_io import array_to_datum, write_lmdb_atomically

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import bench_models  # noqa: E402


@pytest.fixture(scope="module")
def mnist_like(tmp_path_factory):
    """A folder with small MNIST-shaped LMDBs where LeNet's file looks for them (a clean clone has none)."""
    root = tmp_path_factory.mktemp("data_root")
    rng = np.random.default_rng(0)
    for name in ("mnist_train_lmdb", "mnist_test_lmdb"):
        images = rng.integers(0, 256, (32, 1, 28, 28), dtype=np.uint8)
        write_lmdb_atomically(str(root / "data" / "mnist" / name),
                              ((f"{i:08d}", array_to_datum(x, i % 10).SerializeToString()) for i, x in enumerate(images)))
    return str(root)


def test_lenet_gemm_shapes_are_the_layers_products(mnist_like):
    solver, seeds = bench_models.build(bench_models.LENET, 4, mnist_like)
    assert seeds == {}                      # LeNet has its own loss: no diff to seed
    got = bench_models.gemm_shapes(solver.net)
    # conv1: 20 filters of 1x5x5 over 4*24*24 positions, no data gradient (its bottom is the data);
    # conv2: 50 of 20x5x5 over 4*8*8; ip1 800 -> 500; ip2 500 -> 10.
    assert got == [
        ("conv1", "fwd", 1, 20, 25, 2304), ("conv1", "wgrad", 1, 20, 2304, 25),
        ("conv2", "fwd", 1, 50, 500, 256), ("conv2", "wgrad", 1, 50, 256, 500), ("conv2", "dgrad", 1, 500, 50, 256),
        ("ip1", "fwd", 1, 4, 800, 500), ("ip1", "wgrad", 1, 500, 4, 800), ("ip1", "dgrad", 1, 4, 500, 800),
        ("ip2", "fwd", 1, 4, 500, 10), ("ip2", "wgrad", 1, 10, 4, 500), ("ip2", "dgrad", 1, 4, 10, 500),
    ]


def test_lenet_training_iteration_runs_and_updates_weights(mnist_like):
    solver, _ = bench_models.build(bench_models.LENET, 8, mnist_like)
    before = solver.net.params["conv1"][0].data.copy()
    r = bench_models.bench_net(bench_models.LENET, 8, iterations=1, warmup=0, floor_passes=1, data_root=mnist_like)
    assert r["finite"] and r["name"] == "LeNet" and r["batch"] == 8
    for key in ("forward_ms", "backward_ms", "update_ms", "iteration_ms", "fwd_ms", "bwd_ms", "peak_rss_mb"):
        assert r[key] > 0, key
    assert r["gemms"] == 11
    # 2*m*k*n summed over the forward products above, at batch 8.
    assert np.isclose(r["gflop_fwd"], 2 * (20 * 25 * 8 * 576 + 50 * 500 * 8 * 64 + 8 * 800 * 500 + 8 * 500 * 10) / 1e9)
    # build() gives a fresh solver each time; one apply_update on it must move the weights.
    net = solver.net
    net.clear_param_diffs()
    net.forward_prefilled()
    net.backward_from_to()
    solver.apply_update()
    assert not np.allclose(net.params["conv1"][0].data, before)


def test_deploy_net_seeds_output_diff_and_backward_reaches_every_layer(tmp_path):
    from netspec.schema import read_net
    # A tiny deploy-style net (Input, conv, softmax, no loss) through the same path as the big ones.
    path = tmp_path / "tiny_deploy.prototxt"
    path.write_text('name: "tiny" layer { name: "data" type: "Input" top: "data" '
                    'input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } } '
                    'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
                    'convolution_param { num_output: 4 kernel_size: 3 } } '
                    'layer { name: "prob" type: "Softmax" bottom: "conv" top: "prob" }')
    solver, seeds = bench_models.build(str(path), 2)
    assert list(seeds) == ["prob"] and seeds["prob"].shape == (2, 4, 6, 6)
    assert all(solver.net._layer_need_backward)
    shapes = bench_models.gemm_shapes(solver.net)
    # No data gradient into the net's input (as in a training net and in PyTorch), though
    # force_backward runs every layer's backward.
    assert [s[1] for s in shapes] == ["fwd", "wgrad"]
    assert shapes[0][2:] == (1, 4, 27, 2 * 36)
    net = solver.net
    net.blobs["data"].diff[...] = 7
    bench_models.train_step(solver, seeds)
    assert np.all(net.blobs["data"].diff == 7)
    assert np.any(net.params["conv"][0].diff != 0)
    r = bench_models.bench_net(str(path), 2, iterations=1, warmup=0, floor_passes=1)
    assert r["finite"] and r["backward_ms"] > 0
    assert read_net(str(path)).layer[0].input_param.shape[0].dim[0] == 1   # the file itself is untouched


# A 3x3 stride-1 layer Winograd takes (2 groups of 32 channels, 9x9 maps: 2 x 5 x 5 = 50 tiles, from
# MIN_TILES), a depthwise layer, a 1x1 layer and an InnerProduct; TEST phase, so nothing runs backward.
ALGORITHM_NET = """name: "algo" layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 64 dim: 9 dim: 9 } } }
layer { name: "wino" type: "Convolution" bottom: "data" top: "wino"
        convolution_param { num_output: 32 kernel_size: 3 pad: 1 group: 2 } }
layer { name: "dw" type: "Convolution" bottom: "wino" top: "dw"
        convolution_param { num_output: 32 kernel_size: 3 pad: 1 stride: 2 group: 32 } }
layer { name: "pw" type: "Convolution" bottom: "dw" top: "pw" convolution_param { num_output: 8 kernel_size: 1 } }
layer { name: "ip" type: "InnerProduct" bottom: "pw" top: "ip" inner_product_param { num_output: 10 } }
"""


@pytest.fixture
def algorithm_net(tmp_path):
    from netspec.layers import native
    from netspec.net import Net
    from netspec.proto import caffe_pb2
    if not (native.usable(np.float32) and native.has_winograd() and native.has_depthwise()):
        pytest.skip("the compiled Winograd and depthwise kernels are not built")
    path = tmp_path / "algo.prototxt"
    path.write_text(ALGORITHM_NET)
    return Net(str(path), caffe_pb2.TEST)


def test_algorithm_floor_counts_the_engines_products(algorithm_net):
    net = algorithm_net
    work = bench_models.algorithm_work(net)
    engines = {r.name: bench_models.engine_name(r) for r in net.records if bench_models.engine_name(r)}
    assert engines["wino"] == "WinogradConv" and engines["dw"] == "DepthwiseConv"
    # By hand: wino's 9x9 output is 5 x 5 tiles of 2x2 per image, 50 over the batch; 16 points x 2
    # groups of (16 x 32) @ (32 x 50). dw: no GEMM. pw: 8 x 32 over 2 x 5 x 5 positions. ip: 2 x 200 -> 10.
    assert work["gemms"] == [("wino", "fwd", 32, 16, 32, 50), ("pw", "fwd", 1, 8, 32, 50),
                             ("ip", "fwd", 1, 2, 200, 10)]
    assert work["weight_transforms"] == [("wino", "fwd", 1, 16, 9, 32 * 32)]
    assert [r.name for r in work["depthwise"]] == ["dw"] and work["unmodelled"] == []
    # What the engines themselves hold: Winograd's tile count and its U (16, groups, M/G, C/G).
    wino = net.layer_dict["wino"].engine
    assert wino.total == 50 and sum(t1 - t0 for t0, t1 in wino.blocks) == 50
    assert wino.transformed_weights(np.float32).reshape(16, 2, 16, -1).shape == (16, 2, 16, 32)
    # The GEMM floor keeps im2col's products: 288-row columns over 2 x 81 positions, dw's 32 (1 x 9).
    assert [s for s in bench_models.gemm_shapes(net) if s[0] in ("wino", "dw")] == [
        ("wino", "fwd", 2, 16, 288, 162), ("dw", "fwd", 32, 1, 9, 50)]


def test_winograd_tiles_round_odd_maps_up():
    assert bench_models.winograd_tiles((3, 8, 7, 4)) == 3 * 4 * 2
    assert bench_models.winograd_tiles((1, 8, 1, 1)) == 1


def test_floors_report_both_floors_and_the_depthwise_kernel(algorithm_net):
    f = bench_models.floors(algorithm_net, passes=1)
    assert f["winograd_layers"] == 1 and f["depthwise_layers"] == 1 and f["unmodelled"] == []
    assert np.isclose(f["alg_gflop_fwd"], 2 * (32 * 16 * 32 * 50 + 8 * 32 * 50 + 2 * 200 * 10) / 1e9)
    assert np.isclose(f["gflop_fwd"], 2 * (2 * 16 * 288 * 162 + 32 * 9 * 50 + 8 * 32 * 50 + 2 * 200 * 10) / 1e9)
    for key in ("fwd_ms", "alg_fwd_ms", "depthwise_fwd_ms", "winograd_weights_ms"):
        assert f[key] > 0, key
