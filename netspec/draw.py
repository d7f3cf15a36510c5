"""Drawing a net as a Graphviz graph (pycaffe's draw.py / draw_net.py, without pydot).

Layers are boxes labelled with name, type and their main parameters; blobs are
ellipses. An in-place layer (ReLU with top == bottom) would make a cycle
blob -> layer -> same blob; instead each write to a blob starts a new version
of it, and a version that only feeds the in-place layer that overwrites it is
not drawn, so `ip1 -> relu1 -> (ip1) -> ip2` reads as a chain. `.dot` is
written directly; other formats go through Graphviz's `dot` program.
"""
import os
import shutil
import subprocess

from .errors import NetspecError
from .graph import filter_net
from .proto import caffe_pb2
from .schema import read_net, write_atomically

RANKDIRS = ("LR", "TB", "BT", "RL")
RENDERED_FORMATS = ("png", "svg", "pdf")
_LAYER_COLORS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
                 "InnerProduct": "#CC33FF"}
_DEFAULT_LAYER_COLOR = "#6495ED"
_BLOB_COLOR = "#E0E0E0"


def _quote(text):
    # DOT quoted string; "\n" inside labels stays a DOT line break.
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _join(values):
    values = list(values)
    return "x".join(str(v) for v in values) if values else None


def _layer_details(layer):
    """A few lines of the parameters that say what the layer does."""
    t, lines = layer.type, []
    if t in ("Convolution", "Deconvolution"):
        p = layer.convolution_param
        kernel = _join(p.kernel_size) or _join([p.kernel_h, p.kernel_w])
        lines.append(f"{p.num_output} outputs, kernel {kernel}")
        lines.append(f"stride {_join(p.stride) or 1}, pad {_join(p.pad) or 0}")
    elif t == "Pooling":
        p = layer.pooling_param
        method = caffe_pb2.PoolingParameter.PoolMethod.Name(p.pool)
        if p.global_pooling:
            lines.append(f"{method} global")
        else:
            kernel = p.kernel_size or _join([p.kernel_h, p.kernel_w])
            lines.append(f"{method} kernel {kernel}")
            lines.append(f"stride {p.stride or _join([p.stride_h, p.stride_w])}, pad {p.pad}")
    elif t == "InnerProduct":
        lines.append(f"{layer.inner_product_param.num_output} outputs")
    elif t == "Input":
        lines.extend(_join(s.dim) for s in layer.input_param.shape)
    elif t in ("Data", "ImageData", "MemoryData"):
        p = {"Data": layer.data_param, "ImageData": layer.image_data_param,
             "MemoryData": layer.memory_data_param}[t]
        lines.append(f"batch {p.batch_size}")
    elif t == "Dropout":
        lines.append(f"ratio {layer.dropout_param.dropout_ratio:g}")
    for rule in layer.include:
        if rule.HasField("phase"):
            lines.append(f"{caffe_pb2.Phase.Name(rule.phase)} only")
    return lines


def _phase_filter(net_param, phase):
    if phase is None or (isinstance(phase, str) and phase.upper() == "ALL"):
        return net_param
    if isinstance(phase, str):
        if phase.upper() not in ("TRAIN", "TEST"):
            raise NetspecError(f"unknown phase '{phase}' (expected TRAIN, TEST or ALL)")
        phase = caffe_pb2.Phase.Value(phase.upper())
    state = caffe_pb2.NetState()
    state.CopyFrom(net_param.state)
    state.phase = phase
    return filter_net(net_param, state)


def _is_in_place(layer, j):
    return j < len(layer.bottom) and layer.bottom[j] == layer.top[j]


def net_to_dot(net_param, rankdir="LR", phase=None):
    """Graphviz DOT text for `net_param` (a NetParameter or a path to a net file)."""
    if not isinstance(net_param, caffe_pb2.NetParameter):
        net_param = read_net(net_param)
    if rankdir not in RANKDIRS:
        raise NetspecError(f"unknown rankdir '{rankdir}' (expected one of {', '.join(RANKDIRS)})")
    net = _phase_filter(net_param, phase)

    # Pass 1: versions of each blob. An in-place write starts a new version; another layer
    # writing an existing name (train/test variants drawn together) shares the current one.
    current, count = {}, {}           # blob name -> latest version id, number of versions
    producers, consumers, versions = {}, {}, []  # versions: (id, blob name) in creation order

    def new_version(name):
        count[name] = count.get(name, 0) + 1
        vid = f"blob_{name}" if count[name] == 1 else f"blob_{name}@{count[name] - 1}"
        current[name] = vid
        versions.append((vid, name))
        producers[vid], consumers[vid] = [], []
        return vid

    layer_inputs, layer_outputs = [], []
    for i, layer in enumerate(net.layer):
        inputs = []
        for name in layer.bottom:
            vid = current.get(name) or new_version(name)   # e.g. a legacy `input:` blob
            consumers[vid].append(i)
            inputs.append(vid)
        outputs = []
        for j, name in enumerate(layer.top):
            vid = new_version(name) if _is_in_place(layer, j) or name not in current else current[name]
            producers[vid].append(i)
            outputs.append(vid)
        layer_inputs.append(inputs)
        layer_outputs.append(outputs)

    def folded(vid):
        # Drawn only if something other than the in-place layer overwriting it reads it.
        readers = consumers[vid]
        if not producers[vid] or len(readers) != 1:
            return False
        reader = net.layer[readers[0]]
        return any(_is_in_place(reader, j) and layer_inputs[readers[0]][j] == vid
                   for j in range(len(reader.top)))

    # Pass 2: nodes and edges; a folded version's producer links straight to its reader.
    lines = [f"digraph {_quote(net.name or 'Net')} {{", f"  rankdir={rankdir};",
             '  node [fontname="Helvetica", fontsize=11];', '  edge [fontname="Helvetica"];']
    for i, layer in enumerate(net.layer):
        label = "\n".join([layer.name, f"({layer.type})"] + _layer_details(layer))
        color = _LAYER_COLORS.get(layer.type, _DEFAULT_LAYER_COLOR)
        lines.append(f"  {_quote(f'layer_{i}')} [shape=box, style=filled, fillcolor={_quote(color)}, "
                     f"label={_quote(label)}];")
    for vid, name in versions:
        if not folded(vid):
            lines.append(f"  {_quote(vid)} [shape=ellipse, style=filled, fillcolor={_quote(_BLOB_COLOR)}, "
                         f"label={_quote(name)}];")
    for i in range(len(net.layer)):
        for vid in layer_inputs[i]:
            if not folded(vid):
                lines.append(f"  {_quote(vid)} -> {_quote(f'layer_{i}')};")
        for vid in layer_outputs[i]:
            target = f"layer_{consumers[vid][0]}" if folded(vid) else vid
            lines.append(f"  {_quote(f'layer_{i}')} -> {_quote(target)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def draw_net_to_file(net_param, path, rankdir="LR", phase=None):
    """Write the drawing: `.dot` as text, `.png`/`.svg`/`.pdf` rendered by Graphviz's `dot`."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext not in ("dot", "gv") + RENDERED_FORMATS:
        raise NetspecError(f"{path}: unknown output format '.{ext}' "
                           "(use .dot, .gv, .png, .svg or .pdf)")
    dot_text = net_to_dot(net_param, rankdir, phase)
    if ext in ("dot", "gv"):
        write_atomically(path, dot_text.encode("utf-8"))
        return
    dot_program = shutil.which("dot")
    if dot_program is None:
        raise NetspecError(f"{path}: rendering .{ext} needs Graphviz's `dot` program, which is not "
                           "installed; install graphviz or write a .dot file instead")
    try:
        result = subprocess.run([dot_program, f"-T{ext}", "-o", path], input=dot_text.encode("utf-8"),
                                capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetspecError(f"{path}: running dot failed ({e})") from None
    if result.returncode != 0:
        message = " ".join(result.stderr.decode("utf-8", "replace").split())
        raise NetspecError(f"{path}: dot failed (exit {result.returncode}): {message}")
