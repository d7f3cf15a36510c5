"""Bounded memory: YAML alias bombs, gzip bombs and oversized IDX headers are refused before they
expand; the whole net's memory is checked against the budget, naming the largest layers."""
import gzip
import io
import os
import time

import pytest

import netspec as caffe
from netspec import memory
from netspec.datasets.mnist import read_idx
from netspec.errors import NetspecError
from netspec.proto import caffe_pb2
from netspec.schema import parse_yaml


def alias_bomb(levels=9, width=10):
    """A billion-laughs net: each level lists the previous one `width` times (width**levels strings)."""
    lines = ["name: bomb", "layer:", "  - name: a", "    type: ReLU", "    include:", "      - stage: &s0 [x]"]
    rules = []
    for i in range(1, levels):
        refs = ", ".join([f"*s{i - 1}"] * width)
        rules.append(f"s{i}: &s{i} [{refs}]")
    # A list of lists is no stage list: refer to each level through a rule of its own.
    text = "\n".join(lines) + "\n"
    layer_refs = ", ".join(["*L"] * width)
    text = (f"name: bomb\nlayer: [&L {{name: a, type: ReLU, include: [&R {{stage: [{', '.join(['x'] * 50)}]}}, "
            f"{', '.join(['*R'] * 2000)}]}}, {', '.join(['*L'] * 2000)}]\n")
    return text


def test_a_yaml_alias_bomb_is_refused_quickly():
    text = alias_bomb()
    assert len(text) < 40_000               # 2000 x 2000 x 50 = 200 million strings if expanded
    start = time.perf_counter()
    with pytest.raises(NetspecError, match=r"bomb.yaml:2:\d+: malformed YAML: its aliases expand to far more "
                                           r"nodes than the file holds \(an alias bomb\?\)"):
        parse_yaml(text, caffe_pb2.NetParameter(), "bomb.yaml")
    assert time.perf_counter() - start < 60


def test_a_recursive_alias_is_refused():
    text = "name: n\nlayer: &l [{name: a, type: ReLU, include: [{stage: [x]}]}]\n"
    parse_yaml(text, caffe_pb2.NetParameter(), "ok.yaml")      # a plain anchor is fine
    loop = "layer: &l\n  name: a\n  type: ReLU\n  python_param: *l\n"
    with pytest.raises(NetspecError, match="loop.yaml"):
        parse_yaml(loop, caffe_pb2.NetParameter(), "loop.yaml")


def test_duplicate_yaml_keys_are_refused():
    with pytest.raises(NetspecError, match=r"d.yaml:2:1: field 'name' of caffe.NetParameter is given twice in one "
                                           r"mapping \(first at 1:1\)"):
        parse_yaml("name: a\nname: b\n", caffe_pb2.NetParameter(), "d.yaml")


def _gzip_idx(path, header, body_size):
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header)
        block = bytes(1 << 20)
        for _ in range(body_size >> 20):
            f.write(block)


def test_an_idx_header_promising_terabytes_is_refused_before_decompressing(tmp_path):
    path = tmp_path / "bomb-images-idx3-ubyte.gz"
    header = (2051).to_bytes(4, "big") + (4_000_000_000).to_bytes(4, "big") + (4_000_000_000).to_bytes(4, "big") \
        + (1000).to_bytes(4, "big")
    _gzip_idx(path, header, 64 << 20)
    start = time.perf_counter()
    with pytest.raises(NetspecError, match=r"the header promises 4000000000 images of 4000000000x1000 "
                                           r"\(16000000000000000000016 bytes\), more than netspec reads"):
        read_idx(str(path), "images")
    assert time.perf_counter() - start < 5          # the 64 MB behind the header were never inflated


def test_a_gzip_holding_more_than_its_header_says_stops_at_the_promise(tmp_path):
    path = tmp_path / "long-images-idx3-ubyte.gz"
    header = (2051).to_bytes(4, "big") + (2).to_bytes(4, "big") + (2).to_bytes(4, "big") + (2).to_bytes(4, "big")
    _gzip_idx(path, header, 64 << 20)
    with pytest.raises(NetspecError, match=r"the header promises 2 images of 2x2 \(24 bytes\) but the file has more "
                                           r"bytes \(uncompressed\); extra data after the last record"):
        read_idx(str(path), "images")


def test_a_raw_idx_header_larger_than_the_file_names_positive_sizes(tmp_path):
    path = tmp_path / "big-labels-idx1-ubyte"
    path.write_bytes((2049).to_bytes(4, "big") + (0xFFFFFFFF).to_bytes(4, "big") + b"\x01\x02")
    with pytest.raises(NetspecError, match=r"the header promises 4294967295 labels, which needs 4294967303 bytes; "
                                           r"the file has 10 bytes"):
        read_idx(str(path), "labels")


BIG = """
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: {n} dim: 3 dim: 512 dim: 512 }} }} }}
layer {{ name: "a" type: "ReLU" bottom: "data" top: "a" }}
layer {{ name: "b" type: "ReLU" bottom: "a" top: "b" }}
layer {{ name: "c" type: "ReLU" bottom: "b" top: "c" }}
"""


def test_the_whole_net_is_checked_not_each_blob(tmp_path, monkeypatch):
    # Each blob (data + diff of 64x3x512x512 floats) is 0.375 GiB, well under the budget; all of them are not.
    monkeypatch.setattr(memory, "budget", lambda: (1 << 30, "the machine's available memory"))
    (tmp_path / "big.prototxt").write_text(BIG.format(n=64))
    with pytest.raises(NetspecError) as info:
        caffe.Net(str(tmp_path / "big.prototxt"), caffe.TEST)
    message = str(info.value)
    assert "layer 'b'" not in message or "the net needs at least 1.12 GiB" in message
    assert "the net needs at least 1.12 GiB (outputs and their gradients 1.12 GiB" in message
    assert "but the machine's available memory allows 1.00 GiB" in message
    assert "largest layers: 'data' (Input) 0.38 GiB in outputs" in message
    assert "they scale with batch_size" in message
    (tmp_path / "small.prototxt").write_text(BIG.format(n=8))
    caffe.Net(str(tmp_path / "small.prototxt"), caffe.TEST).close()


def test_when_parameters_dominate_the_hint_is_not_batch_size(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "budget", lambda: (1 << 30, "the address-space limit (ulimit -v)"))
    (tmp_path / "wide.prototxt").write_text("""
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 40000 } } }
    layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 5000 } }
    """)
    with pytest.raises(NetspecError, match=r"layer 'fc' \(InnerProduct\): blob of shape \(5000, 40000\) needs 1.49 "
                                           r"GiB .* the blob is a parameter of the layer: a smaller num_output"):
        caffe.Net(str(tmp_path / "wide.prototxt"), caffe.TEST)
    (tmp_path / "two.prototxt").write_text("""
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 40000 } } }
    layer { name: "fc1" type: "InnerProduct" bottom: "data" top: "fc1" inner_product_param { num_output: 2500 } }
    layer { name: "fc2" type: "InnerProduct" bottom: "data" top: "fc2" inner_product_param { num_output: 2500 } }
    """)
    with pytest.raises(NetspecError, match=r"largest layers: 'fc1' \(InnerProduct\) 0.75 GiB in parameters, 'fc2'.*the "
                                           r"parameters dominate: a smaller num_output or kernel, not batch_size"):
        caffe.Net(str(tmp_path / "two.prototxt"), caffe.TEST)


@pytest.mark.parametrize("shape,message", [
    ("dim: -1 dim: 3", r"layer 'data' \(Input\): negative dimension in blob shape \(-1, 3\)"),
    ("dim: 4294967296 dim: 4294967296 dim: 4294967296", r"layer 'data' \(Input\): blob shape .* has "
                                                        r"79228162514264337593543950336 elements"),
    (" ".join(["dim: 1"] * 40), r"layer 'data' \(Input\): blob shape has 40 axes; at most 32 are allowed"),
])
def test_shapes_no_blob_can_take_get_one_line(tmp_path, shape, message):
    (tmp_path / "net.prototxt").write_text(
        f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {shape} }} }} }}')
    with pytest.raises(NetspecError, match=message):
        caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST)


WORKING = """
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 64 dim: 16 dim: 256 dim: 256 }} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "data" top: "data" relu_param {{ negative_slope: -0.1 }} }}
layer {{ name: "norm" type: "LRN" bottom: "data" top: "norm" }}
layer {{ name: "pool" type: "Pooling" bottom: "norm" top: "pool" pooling_param {{ pool: {pool} kernel_size: 2 stride: 2 }} }}
"""


def test_work_buffers_count_when_the_blobs_alone_would_fit(tmp_path, monkeypatch):
    # Blobs (data and diff): data 0.5 GiB, norm 0.5 GiB, pool 0.125 GiB. Work: the in-place leaky ReLU
    # keeps its input (0.25 GiB) and a sign mask (1/16 GiB) for backward, LRN its scale and the squares
    # (0.5 GiB), MAX pooling its winners (int32 per output, byte indices and masks: 0.15625 GiB).
    # Up to norm the blobs are 1.0 GiB, under the 1.5 GiB budget; with the work, 1.8125 GiB.
    monkeypatch.setattr(memory, "budget", lambda: (3 << 29, "the address-space limit (ulimit -v)"))
    (tmp_path / "max.prototxt").write_text(WORKING.format(pool="MAX"))
    with pytest.raises(NetspecError) as info:
        caffe.Net(str(tmp_path / "max.prototxt"), caffe.TRAIN)
    message = str(info.value)
    assert "the net needs at least 1.81 GiB (outputs and their gradients 1.00 GiB, parameters and their " \
           "gradients 0.00 GiB, work buffers 0.81 GiB) but the address-space limit (ulimit -v) allows 1.50 GiB" \
           in message, message
    assert "largest layers: 'norm' (LRN) 1.00 GiB in outputs, 'data' (Input) 0.50 GiB in outputs, " \
           "'relu' (ReLU) 0.31 GiB in work buffers" in message, message
    # With 1.95 GiB: AVE pooling keeps no winners (1.9375 GiB in all) and fits; MAX's 0.156 GiB do not.
    monkeypatch.setattr(memory, "budget", lambda: (int(1.95 * 2**30), "the address-space limit (ulimit -v)"))
    with pytest.raises(NetspecError, match=r"the net needs at least 2.09 GiB \(outputs and their gradients 1.12 GiB, "
                                           r"parameters and their gradients 0.00 GiB, work buffers 0.97 GiB\)"):
        caffe.Net(str(tmp_path / "max.prototxt"), caffe.TRAIN)
    (tmp_path / "ave.prototxt").write_text(WORKING.format(pool="AVE"))
    caffe.Net(str(tmp_path / "ave.prototxt"), caffe.TRAIN).close()
    # A TEST net runs no backward: what only backward keeps is not counted (1.78 GiB in all).
    caffe.Net(str(tmp_path / "max.prototxt"), caffe.TEST).close()


def test_the_work_hook_is_the_layers_own():
    """Python layers (and any layer) may say what they keep; the base class says nothing."""
    from netspec.layers.base import Layer
    from netspec.memory import own_work_bytes
    assert own_work_bytes(Layer(caffe_pb2.LayerParameter(name="x", type="Python")), [], []) == 0

    class Keeps(Layer):
        def work_bytes(self, bottom, top):
            return 1234
    assert own_work_bytes(Keeps(caffe_pb2.LayerParameter(name="y")), [], []) == 1234


def test_convolution_work_is_its_columns_and_their_gradient():
    from google.protobuf import text_format
    from netspec.net import Net
    text = """
    layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 dim: 10 dim: 12 } } }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 6 kernel_size: 3 group: 2 } }
    layer { name: "deconv" type: "Deconvolution" bottom: "c" top: "d" convolution_param { num_output: 2 kernel_size: 2 stride: 2 } }
    layer { name: "relu" type: "ReLU" bottom: "d" top: "d" }
    """
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe_pb2.TEST)
    work = {r.name: memory.work_bytes(r.layer, r.bottoms, r.tops) for r in net.records}
    # float32 columns and their gradient: rows (channels per group x taps) x groups, by the
    # top's positions, by the samples. conv: 2 x 9 rows x 2 groups, an 8 x 10 top; deconv (weights
    # 6 x 2 x 2 x 2): 2 x 4 rows, a 16 x 20 top.
    assert work["conv"] == 2 * (2 * 9 * 2) * (8 * 10) * 2 * 4
    assert work["deconv"] == 2 * (2 * 4) * (16 * 20) * 2 * 4
    assert work["in"] == work["relu"] == 0
