"""benchmarks/bench_peers.py's pure helpers and its torch twin of a net (no peers needed, no timing asserts)."""
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import bench_peers  # noqa: E402
import peer_torch  # noqa: E402


def test_worker_env_sets_or_removes_every_thread_variable():
    base = {"PATH": "/bin", "OPENBLAS_NUM_THREADS": "7", "NETSPEC_THREADS": "7"}
    two = bench_peers.thread_env(base, 2)
    assert all(two[v] == "2" for v in bench_peers.THREAD_VARS) and two["PATH"] == "/bin"
    default = bench_peers.thread_env(base, None)
    assert not any(v in default for v in bench_peers.THREAD_VARS) and default["PATH"] == "/bin"


def test_ort_profile_nodes_map_back_to_caffe_layers():
    layers = {"conv1": "Convolution", "relu1": "ReLU", "ip1": "InnerProduct", "fire2/squeeze1x1": "Convolution",
              "fire2/relu_squeeze1x1": "ReLU"}
    producers = {"conv1": "conv1", "res2a": "res2a_branch", "fire2/squeeze1x1": "fire2/squeeze1x1"}
    name = bench_peers.layer_of_node
    assert name("ip1:Gemm_kernel_time", layers, producers) == "ip1"            # netspec's own node name
    assert name("fused ip1:Gemm_kernel_time", layers, producers) == "ip1"      # ORT's Gemm+ReLU fusion
    assert name("conv1_nchwc_kernel_time", layers, producers) == "conv1"       # NCHWc rewrite, by output value
    assert name("fire2/squeeze1x1_nchwc_kernel_time", layers, producers) == "fire2/squeeze1x1"
    assert name("conv1/relu1_nchwc", layers, producers) == "relu1"             # an earlier state of a blob
    assert name("res2a_nchwc", layers, producers) == "res2a_branch"            # a blob: the layer that made it
    assert name("ReorderOutput_token_6_kernel_time", layers, producers) == bench_peers.REORDER
    events = [{"cat": "Node", "name": "conv1_nchwc_kernel_time", "dur": 30, "args": {"op_name": "Conv"}},
              {"cat": "Node", "name": "conv1_nchwc_kernel_time", "dur": 10, "args": {"op_name": "Conv"}},
              {"cat": "Node", "name": "ip1:Gemm_fence_before", "dur": 99},
              {"cat": "Session", "name": "model_run", "dur": 500}]
    assert bench_peers.ort_profile_by_layer(events, layers, producers) == ({"conv1": 40.0}, {"conv1": "Conv"})
    assert bench_peers.by_type({"conv1": 40.0, "ip1": 2.0, "x": 1.0}, layers) == {
        "Convolution": 40.0, "InnerProduct": 2.0, "?": 1.0}


def test_tables_give_netspec_over_peer_and_refusals():
    samples = {"netspec": [10.0, 12.0, 11.0], "ort": [5.0, 5.5, 4.5], "opencv@busy": [1.0]}
    status = {"ort": {"diff": 1e-7}, "opencv": {"diff": 0.5, "refused": True}}
    assert bench_peers._cell(samples, status, "ort", 11.0) == "5.0 (2.20x)"
    assert bench_peers._cell(samples, status, "opencv", 11.0) == "differs (5e-01)"
    assert bench_peers.median_ratio([4.0, 2.0, 6.0], [2.0]) == 2.0 and bench_peers.median_ratio([], [1.0]) is None
    res = {"threads": 1, "samples": {"netspec": [20.0], "netspec@busy": [50.0], "ort": [10.0], "ort@busy": [15.0]},
           "status": {}, "rss": {}}
    rows = bench_peers.contention_table([("lenet", 64, res)])
    assert rows[2].endswith("| 20.0 | 50.0 | 2.50x |") and rows[3].endswith("| 10.0 | 15.0 | 1.50x |")


def test_caffe_geometry_fields_as_torch_wants_them():
    from netspec.proto import caffe_pb2
    p = caffe_pb2.ConvolutionParameter(kernel_size=[3], stride=[2], pad=[1])
    assert peer_torch.conv_geometry(p) == ((3, 3), (2, 2), (1, 1), (1, 1))
    p = caffe_pb2.ConvolutionParameter(kernel_h=1, kernel_w=5, pad_h=0, pad_w=2)
    assert peer_torch.conv_geometry(p)[0] == (1, 5) and peer_torch.conv_geometry(p)[2] == (0, 2)
    pool = caffe_pb2.PoolingParameter(global_pooling=True)
    assert peer_torch.pool_geometry(pool, (2, 8, 7, 5)) == ((7, 5), (1, 1), (0, 0))


TINY = """name: "tiny" layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 dim: 9 dim: 9 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 6 kernel_size: 3 stride: 2 pad: 1 group: 2 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "lrn" type: "LRN" bottom: "conv" top: "lrn" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 } }
layer { name: "pool" type: "Pooling" bottom: "lrn" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ave" type: "Pooling" bottom: "conv" top: "ave" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "dw" type: "Convolution" bottom: "ave" top: "dw"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 group: 6 bias_term: false } }
layer { name: "cat" type: "Concat" bottom: "pool" bottom: "dw" top: "cat" }
layer { name: "sum" type: "Eltwise" bottom: "pool" bottom: "dw" top: "sum" eltwise_param { coeff: 1 coeff: -2 } }
layer { name: "drop" type: "Dropout" bottom: "cat" top: "cat" }
layer { name: "ip" type: "InnerProduct" bottom: "cat" top: "ip" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""


def test_torch_twin_computes_the_nets_forward(tmp_path):
    torch = pytest.importorskip("torch")
    from netspec.net import Net
    from netspec.proto import caffe_pb2
    from time_models import fill_net
    path = tmp_path / "tiny.prototxt"
    path.write_text(TINY)
    net = fill_net(Net(str(path), caffe_pb2.TEST))
    rng = np.random.default_rng(3)
    for layer in net.layers:           # BatchNorm's statistics and Scale's bias away from identity
        if layer.type in ("BatchNorm", "Scale"):
            for blob in layer.blobs[:2]:
                blob.data[...] = rng.uniform(0.5, 1.5, blob.shape)
    net.forward_prefilled()
    module = peer_torch.build_module(net, torch).eval()
    # conv w+b, Scale gamma+beta (as the folded BatchNorm's weight and bias), dw w, ip w+b.
    assert sum(1 for _ in module.parameters()) == 7
    with torch.no_grad():
        out = module({"data": torch.from_numpy(net.blobs["data"].data.copy())})
    got = out["prob"].numpy()
    assert got.shape == (2, 5)
    assert bench_peers.relative_difference(got, net.blobs["prob"].data) < 1e-5
    # The other output blob (Eltwise's, which nothing reads) too.
    assert bench_peers.relative_difference(out["sum"].numpy(), net.blobs["sum"].data) < 1e-5


def test_forward_table_divides_by_both_floors():
    floor = {"fwd_ms": 40.0, "alg_fwd_ms": 20.0, "depthwise_fwd_ms": 5.0, "depthwise_layers": 13,
             "winograd_weights_ms": 1.5, "winograd_layers": 3, "unmodelled": []}
    res = {"threads": 2, "samples": {"netspec": [30.0], "ort": [10.0]}, "status": {"ort": {"diff": 1e-7}},
           "floor": floor, "rss": {}}
    row = bench_peers.forward_table([("mobilenet", 10, res)])[2].split(" | ")
    # GEMM floor, netspec / it, ORT / it; algorithm floor, direct depthwise, netspec / it, ORT / it.
    assert row[7:14] == ["40.0", "0.75x", "0.25x", "20.0", "5.0", "1.50x", "0.50x"]
    without = dict(floor, depthwise_layers=0, depthwise_fwd_ms=0.0)
    assert bench_peers.forward_table([("resnet50", 1, dict(res, floor=without))])[2].split(" | ")[11] == "—"
    notes = " ".join(bench_peers.floor_notes([("caffenet", 10, res)]))
    assert "caffenet 10/2T 1.5 ms (3 layers)" in notes
