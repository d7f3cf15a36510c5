"""Drawing a net as a Graphviz graph (pycaffe's caffe.draw and draw_net.py; pydot only for get_pydot_graph).

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
from .durable import write_file
from .schema import read_net

RANKDIRS = ("LR", "TB", "BT", "RL")
# What Graphviz's `dot -T` writes and a user is likely to ask for by file extension.
RENDERED_FORMATS = ("png", "svg", "pdf", "jpg", "jpeg", "gif", "bmp", "ps", "eps", "svgz", "tif", "tiff",
                    "json", "xdot", "plain")
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


# Caffe's learning layers, whose lr_mult draw_net.py --display_lrm shows.
_LEARNING_LAYERS = ("Convolution", "Deconvolution", "InnerProduct")


def get_pooling_types_dict():
    """{PoolMethod number: name}, e.g. {0: 'MAX', 1: 'AVE', 2: 'STOCHASTIC'}."""
    return {v.number: v.name for v in caffe_pb2.PoolingParameter.PoolMethod.DESCRIPTOR.values}


def choose_color_by_layertype(layertype):
    return _LAYER_COLORS.get(layertype, _DEFAULT_LAYER_COLOR)


def get_layer_lr_mult(layer):
    """(weight lr_mult, bias lr_mult) of a learning layer (1 where no ParamSpec says otherwise), else None."""
    if layer.type not in _LEARNING_LAYERS:
        return None
    mults = [spec.lr_mult for spec in layer.param] + [1.0, 1.0]
    return mults[0], mults[1]


def get_edge_label(layer):
    """What pycaffe writes on a layer's output edges: the batch of a data layer, the outputs of a learning one."""
    if layer.type == "Data":
        return f"Batch {layer.data_param.batch_size}"
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return None


def get_layer_label(layer, rankdir="LR", display_lrm=False):
    """The layer box's text: name, type and main parameters, on lines (one line in vertical layouts)."""
    return (" " if rankdir in ("TB", "BT") else "\n").join(_label_lines(layer, display_lrm))


def _label_lines(layer, display_lrm):
    lines = [layer.name, f"({layer.type})"] + _layer_details(layer)
    mults = get_layer_lr_mult(layer) if display_lrm else None
    if mults is not None and any(mults):
        lines.append("lr mult: " + ", ".join(f"{m:g}" for m in mults))
    return lines


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


def net_to_dot(net_param, rankdir="LR", phase=None, label_edges=False, display_lrm=False):
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
        label = "\n".join(_label_lines(layer, display_lrm))
        color = choose_color_by_layertype(layer.type)
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
        edge_label = get_edge_label(net.layer[i]) if label_edges else None
        attributes = f" [label={_quote(edge_label)}]" if edge_label else ""
        for vid in layer_outputs[i]:
            target = f"layer_{consumers[vid][0]}" if folded(vid) else vid
            lines.append(f"  {_quote(f'layer_{i}')} -> {_quote(target)}{attributes};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _render(dot_text, fmt, where):
    """Graphviz's `dot -T<fmt>` output for `dot_text`."""
    dot_program = shutil.which("dot")
    if dot_program is None:
        raise NetspecError(f"{where}: rendering .{fmt} needs Graphviz's `dot` program, which is not "
                           "installed; install graphviz or write a .dot file instead")
    try:
        result = subprocess.run([dot_program, f"-T{fmt}"], input=dot_text.encode("utf-8"),
                                capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetspecError(f"{where}: running dot failed ({e})") from None
    if result.returncode != 0:
        message = " ".join(result.stderr.decode("utf-8", "replace").split())
        raise NetspecError(f"{where}: dot failed (exit {result.returncode}): {message}")
    return result.stdout


def draw_net(caffe_net, rankdir="LR", ext="png", phase=None, display_lrm=False, label_edges=True):
    """The drawing as bytes in Graphviz format `ext` (pycaffe's draw_net); 'dot' gives the DOT text."""
    dot_text = net_to_dot(caffe_net, rankdir, phase, label_edges, display_lrm)
    ext = ext.lower().lstrip(".")
    if ext in ("dot", "gv"):
        return dot_text.encode("utf-8")
    if ext not in RENDERED_FORMATS:
        raise NetspecError(f"draw_net: unknown output format '{ext}' (use dot or one of {', '.join(RENDERED_FORMATS)})")
    return _render(dot_text, ext, "draw_net")


def draw_net_to_file(caffe_net, filename, rankdir="LR", phase=None, display_lrm=False, label_edges=True):
    """Write the drawing; the extension picks the format (.dot as text, .png/.jpg/.svg/.pdf/... by Graphviz)."""
    path = os.fspath(filename)
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext not in ("dot", "gv") + RENDERED_FORMATS:
        raise NetspecError(f"{path}: unknown output format '.{ext}' "
                           f"(use .dot, .gv or one of .{', .'.join(RENDERED_FORMATS)})")
    dot_text = net_to_dot(caffe_net, rankdir, phase, label_edges, display_lrm)
    data = dot_text.encode("utf-8") if ext in ("dot", "gv") else _render(dot_text, ext, path)
    write_file(path, data)


def get_pydot_graph(caffe_net, rankdir="LR", label_edges=True, phase=None, display_lrm=False):
    """The drawing as a pydot.Dot (pycaffe's get_pydot_graph); needs the pydot package."""
    try:
        import pydot
    except ImportError:
        raise NetspecError("get_pydot_graph needs the pydot package (pip install pydot, or "
                           "pip install -e '.[draw]' from the netspec checkout); draw_net and "
                           "draw_net_to_file work without it") from None
    graphs = pydot.graph_from_dot_data(net_to_dot(caffe_net, rankdir, phase, label_edges, display_lrm))
    return graphs[0]
