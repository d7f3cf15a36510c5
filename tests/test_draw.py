"""netspec.draw: DOT text for nets, in-place folding, phase filtering, files and the CLI."""
import os
import re
import shutil
import subprocess

import pytest
from google.protobuf import text_format

from netspec import NetspecError, cli, draw
from netspec.proto import caffe_pb2

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENET = os.path.join(REPO, "models", "lenet", "lenet_train_test.prototxt")

_NODE = re.compile(r'^  "((?:[^"\\]|\\.)*)" \[shape=(box|ellipse), .*label="((?:[^"\\]|\\.)*)"\];$')
_EDGE = re.compile(r'^  "((?:[^"\\]|\\.)*)" -> "((?:[^"\\]|\\.)*)";$')
_HEADER = re.compile(r'^(digraph ".*" \{|  rankdir=\w+;|  (node|edge) \[.*\];|\})$')


def parse_dot(text):
    """Nodes {id: (shape, first label line)} and edges [(src, dst)]; every line must be one we know."""
    nodes, edges = {}, []
    for line in text.splitlines():
        node, edge = _NODE.match(line), _EDGE.match(line)
        if node:
            nodes[node.group(1)] = (node.group(2), node.group(3).split("\\n")[0])
        elif edge:
            edges.append((edge.group(1), edge.group(2)))
        else:
            assert _HEADER.match(line), f"unexpected DOT line: {line!r}"
    for src, dst in edges:
        assert src in nodes and dst in nodes, (src, dst)
    return nodes, edges


def labelled_edges(nodes, edges):
    """Edges as ('layer:conv1' | 'blob:conv1', ...) pairs, readable in assertions."""
    def name(node_id):
        shape, label = nodes[node_id]
        return f"{'layer' if shape == 'box' else 'blob'}:{label}"
    return sorted((name(a), name(b)) for a, b in edges)


def assert_acyclic(nodes, edges):
    indegree = {n: 0 for n in nodes}
    for _, dst in edges:
        indegree[dst] += 1
    ready = [n for n, d in indegree.items() if d == 0]
    seen = 0
    while ready:
        node = ready.pop()
        seen += 1
        for src, dst in edges:
            if src == node:
                indegree[dst] -= 1
                if indegree[dst] == 0:
                    ready.append(dst)
    assert seen == len(nodes), "the graph has a cycle"


def lenet():
    with open(LENET) as f:
        return text_format.Parse(f.read(), caffe_pb2.NetParameter())


def test_lenet_all_layers_blobs_and_edges():
    nodes, edges = parse_dot(draw.net_to_dot(lenet()))
    layer_labels = sorted(label for shape, label in nodes.values() if shape == "box")
    blob_labels = sorted(label for shape, label in nodes.values() if shape == "ellipse")
    assert layer_labels == sorted(["mnist", "mnist", "conv1", "pool1", "conv2", "pool2", "ip1", "relu1",
                                   "ip2", "accuracy", "loss"])
    # One ellipse per blob: the in-place ReLU does not add a second `ip1`.
    assert blob_labels == sorted(["data", "label", "conv1", "pool1", "conv2", "pool2", "ip1", "ip2",
                                  "accuracy", "loss"])
    assert labelled_edges(nodes, edges) == sorted([
        ("layer:mnist", "blob:data"), ("layer:mnist", "blob:label"),
        ("layer:mnist", "blob:data"), ("layer:mnist", "blob:label"),
        ("blob:data", "layer:conv1"), ("layer:conv1", "blob:conv1"),
        ("blob:conv1", "layer:pool1"), ("layer:pool1", "blob:pool1"),
        ("blob:pool1", "layer:conv2"), ("layer:conv2", "blob:conv2"),
        ("blob:conv2", "layer:pool2"), ("layer:pool2", "blob:pool2"),
        ("blob:pool2", "layer:ip1"), ("layer:ip1", "layer:relu1"), ("layer:relu1", "blob:ip1"),
        ("blob:ip1", "layer:ip2"), ("layer:ip2", "blob:ip2"),
        ("blob:ip2", "layer:accuracy"), ("blob:label", "layer:accuracy"),
        ("layer:accuracy", "blob:accuracy"),
        ("blob:ip2", "layer:loss"), ("blob:label", "layer:loss"), ("layer:loss", "blob:loss")])
    assert_acyclic(nodes, edges)


def test_layer_labels_carry_key_params():
    text = draw.net_to_dot(lenet())
    assert "conv1\\n(Convolution)\\n20 outputs, kernel 5\\nstride 1, pad 0" in text
    assert "pool1\\n(Pooling)\\nMAX kernel 2\\nstride 2, pad 0" in text
    assert "ip1\\n(InnerProduct)\\n500 outputs" in text
    assert "mnist\\n(Data)\\nbatch 100\\nTEST only" in text


def test_phase_filter():
    train_nodes, train_edges = parse_dot(draw.net_to_dot(lenet(), phase="TRAIN"))
    labels = [label for _, label in train_nodes.values()]
    assert "accuracy" not in labels and labels.count("mnist") == 1
    assert ("blob:ip2", "layer:accuracy") not in labelled_edges(train_nodes, train_edges)
    test_text = draw.net_to_dot(lenet(), phase=caffe_pb2.TEST)
    assert "accuracy\\n(Accuracy)" in test_text and "batch 64" not in test_text and "batch 100" in test_text
    assert draw.net_to_dot(lenet(), phase="ALL") == draw.net_to_dot(lenet())
    with pytest.raises(NetspecError, match="unknown phase 'VAL'"):
        draw.net_to_dot(lenet(), phase="VAL")


def test_in_place_version_kept_when_read_before_overwrite():
    net = text_format.Parse("""
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 } } }
        layer { name: "raw_copy" type: "Split" bottom: "x" top: "x_raw" }
        layer { name: "act" type: "ReLU" bottom: "x" top: "x" }
        layer { name: "scale" type: "Scale" bottom: "x" top: "x" }
        layer { name: "out" type: "Eltwise" bottom: "x" bottom: "x_raw" top: "sum" }
    """, caffe_pb2.NetParameter())
    nodes, edges = parse_dot(draw.net_to_dot(net, rankdir="TB"))
    by_id = {node_id: label for node_id, (_, label) in nodes.items()}
    # x before the ReLU is read by raw_copy, so it is drawn; the version between act and scale is not.
    assert sorted(by_id[n] for n, (shape, _) in nodes.items() if shape == "ellipse") == ["sum", "x", "x", "x_raw"]
    assert labelled_edges(nodes, edges) == sorted([
        ("layer:in", "blob:x"), ("blob:x", "layer:raw_copy"), ("layer:raw_copy", "blob:x_raw"),
        ("blob:x", "layer:act"), ("layer:act", "layer:scale"), ("layer:scale", "blob:x"),
        ("blob:x", "layer:out"), ("blob:x_raw", "layer:out"), ("layer:out", "blob:sum")])
    assert_acyclic(nodes, edges)


def test_names_are_quoted_and_rankdir_checked():
    net = caffe_pb2.NetParameter(name='say "hi"')
    net.layer.add(name='odd "name"\\', type="Input", top=["a\\b"])
    text = draw.net_to_dot(net, rankdir="BT")
    assert text.startswith('digraph "say \\"hi\\"" {') and "  rankdir=BT;" in text
    nodes, _ = parse_dot(text)
    assert sorted(label for _, label in nodes.values()) == ['a\\\\b', 'odd \\"name\\"\\\\']
    with pytest.raises(NetspecError, match="unknown rankdir 'UP'"):
        draw.net_to_dot(net, rankdir="UP")


def test_draw_to_files(tmp_path, monkeypatch):
    out = tmp_path / "lenet.dot"
    draw.draw_net_to_file(lenet(), out, "TB", "TEST")
    assert out.read_text() == draw.net_to_dot(lenet(), "TB", "TEST", label_edges=True)
    with pytest.raises(NetspecError, match="unknown output format '.jpx'"):
        draw.draw_net_to_file(lenet(), tmp_path / "x.jpx")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(NetspecError, match="needs Graphviz's `dot` program.*install graphviz or write a .dot"):
        draw.draw_net_to_file(lenet(), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_cli_draw(tmp_path, capsys, monkeypatch):
    out = tmp_path / "net.dot"
    with pytest.raises(SystemExit) as done:
        cli.main(["draw", LENET, str(out), "--rankdir", "TB", "--phase", "TRAIN"])
    assert done.value.code == 0
    assert out.read_text() == draw.net_to_dot(lenet(), "TB", "TRAIN", label_edges=True)

    with pytest.raises(SystemExit) as done:
        cli.main(["draw", str(tmp_path / "missing.prototxt"), str(out)])
    err = capsys.readouterr().err
    assert done.value.code == 1
    assert err.startswith("netspec: error: ") and "missing.prototxt: no such file" in err
    assert err.count("\n") == 1

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(SystemExit) as done:
        cli.main(["draw", LENET, str(tmp_path / "net.svg")])
    err = capsys.readouterr().err
    assert done.value.code == 1 and "install graphviz" in err and err.count("\n") == 1


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot program is not installed")
def test_dot_program_accepts_output(tmp_path):
    for phase in (None, "TRAIN"):
        result = subprocess.run(["dot", "-Tsvg"], input=draw.net_to_dot(lenet(), phase=phase).encode(),
                                capture_output=True, timeout=60)
        assert result.returncode == 0, result.stderr.decode()
    draw.draw_net_to_file(lenet(), tmp_path / "lenet.svg")
    assert (tmp_path / "lenet.svg").read_text().lstrip().startswith("<?xml")
