"""Bringing nets and solvers written for older Caffe versions up to the current format.

The steps and their order are those of Caffe's upgrade_proto.cpp:

1. V0 nets (`layers { layer { type: "conv" ... } }`): "padding" layers are folded
   into the conv/pool layer that reads them, then every entry becomes a V1 layer.
2. Data-transformation fields (scale, mean_file, crop_size, mirror) written inside
   data_param / image_data_param / window_data_param move to transform_param.
3. V1 nets (`layers { type: CONVOLUTION ... }`) become `layer { type: "Convolution" }`,
   with blobs_lr / weight_decay / param names / blob_share_mode folded into `param`.
4. Net-level `input` + `input_dim` / `input_shape` become one Input layer named "input".
5. BatchNorm layers that declare three param specs get lr_mult and decay_mult 0.
Solvers: the `solver_type` enum becomes the `type` string.

Everything is done in place on the message passed in, which is also returned.
Differences from Caffe (deliberate, all stricter or more complete):
- Caffe logs and carries on where a net cannot be upgraded cleanly (a net mixing
  `layer` and `layers`, input_dim not in groups of 4); here that is a NetspecError.
- Step 2 also applies to current-format layers, so deprecated fields are never
  silently ignored, and it only creates transform_param when it moves something.
- Nets embedded in a solver (net_param, train_net_param, test_net_param) are upgraded too.
"""
from . import glog
from .errors import NetspecError
from .proto import caffe_pb2

_V1 = caffe_pb2.V1LayerParameter
_V1_TYPE_ENUM = _V1.DESCRIPTOR.enum_types_by_name["LayerType"]
_SOURCE = "upgrade_proto.cpp:0"

# V1 LayerType enum name -> current type string (Caffe's UpgradeV1LayerType).
V1_TYPE_NAMES = {
    "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DATA": "Data", "DECONVOLUTION": "Deconvolution", "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise",
    "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

# V0 type string -> V1 LayerType enum name (Caffe's UpgradeV0LayerType).
V0_TYPE_NAMES = {
    "accuracy": "ACCURACY", "bnll": "BNLL", "concat": "CONCAT", "conv": "CONVOLUTION",
    "data": "DATA", "dropout": "DROPOUT", "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN", "hdf5_data": "HDF5_DATA", "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL", "images": "IMAGE_DATA", "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT", "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS", "pool": "POOLING",
    "relu": "RELU", "sigmoid": "SIGMOID", "softmax": "SOFTMAX", "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT", "tanh": "TANH", "window_data": "WINDOW_DATA",
}

# Where each V0 field lands in a V1 layer, by V0 type ("param_message.field").
# A field set on a type not listed here has no home; Caffe drops it with an error log.
_V0_FIELD_HOMES = {
    "num_output": {"conv": "convolution_param.num_output",
                   "innerproduct": "inner_product_param.num_output"},
    "biasterm": {"conv": "convolution_param.bias_term",
                 "innerproduct": "inner_product_param.bias_term"},
    "weight_filler": {"conv": "convolution_param.weight_filler",
                      "innerproduct": "inner_product_param.weight_filler"},
    "bias_filler": {"conv": "convolution_param.bias_filler",
                    "innerproduct": "inner_product_param.bias_filler"},
    "pad": {"conv": "convolution_param.pad", "pool": "pooling_param.pad"},
    "kernelsize": {"conv": "convolution_param.kernel_size", "pool": "pooling_param.kernel_size"},
    "group": {"conv": "convolution_param.group"},
    "stride": {"conv": "convolution_param.stride", "pool": "pooling_param.stride"},
    "pool": {"pool": "pooling_param.pool"},
    "dropout_ratio": {"dropout": "dropout_param.dropout_ratio"},
    "local_size": {"lrn": "lrn_param.local_size"},
    "alpha": {"lrn": "lrn_param.alpha"},
    "beta": {"lrn": "lrn_param.beta"},
    "k": {"lrn": "lrn_param.k"},
    "source": {"data": "data_param.source", "hdf5_data": "hdf5_data_param.source",
               "images": "image_data_param.source", "window_data": "window_data_param.source",
               "infogain_loss": "infogain_loss_param.source"},
    "batchsize": {"data": "data_param.batch_size", "hdf5_data": "hdf5_data_param.batch_size",
                  "images": "image_data_param.batch_size",
                  "window_data": "window_data_param.batch_size"},
    "rand_skip": {"data": "data_param.rand_skip", "images": "image_data_param.rand_skip"},
    "shuffle_images": {"images": "image_data_param.shuffle"},
    "new_height": {"images": "image_data_param.new_height"},
    "new_width": {"images": "image_data_param.new_width"},
    "concat_dim": {"concat": "concat_param.concat_dim"},
    "det_fg_threshold": {"window_data": "window_data_param.fg_threshold"},
    "det_bg_threshold": {"window_data": "window_data_param.bg_threshold"},
    "det_fg_fraction": {"window_data": "window_data_param.fg_fraction"},
    "det_context_pad": {"window_data": "window_data_param.context_pad"},
    "det_crop_mode": {"window_data": "window_data_param.crop_mode"},
    "hdf5_output_param": {"hdf5_output": "hdf5_output_param"},
}
# V0 transformation fields, valid on any type -> transform_param field.
_V0_TRANSFORM_FIELDS = {"scale": "scale", "meanfile": "mean_file", "cropsize": "crop_size",
                        "mirror": "mirror"}
_V0_COPIED = ("blobs", "blobs_lr", "weight_decay")

# Layers whose own parameter message once held the transformation fields.
_DATA_PARAM_OF_V1 = {"DATA": "data_param", "IMAGE_DATA": "image_data_param",
                     "WINDOW_DATA": "window_data_param"}
_DATA_PARAM_OF_V2 = {"Data": "data_param", "ImageData": "image_data_param",
                     "WindowData": "window_data_param"}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")

# V1 per-blob lists folded into LayerParameter.param[i] (V1 field -> ParamSpec field).
_V1_PARAM_SPEC_FIELDS = {"param": "name", "blob_share_mode": "share_mode",
                         "blobs_lr": "lr_mult", "weight_decay": "decay_mult"}
_V1_COPIED_LISTS = ("bottom", "top", "loss_weight", "include", "exclude", "blobs")

_SOLVER_TYPE_NAMES = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad",
                      "RMSPROP": "RMSProp", "ADADELTA": "AdaDelta", "ADAM": "Adam"}


# ------------------------------------------------------------------ what needs doing

def _has_v0_layers(net):
    return any(entry.HasField("layer") for entry in net.layers)


def _data_param_of(layer):
    """Name of the set data_param/image_data_param/window_data_param of a data layer, else None."""
    if isinstance(layer, caffe_pb2.LayerParameter):
        name = _DATA_PARAM_OF_V2.get(layer.type)
    else:
        name = _DATA_PARAM_OF_V1.get(_V1_TYPE_ENUM.values_by_number[layer.type].name
                                     if layer.HasField("type") else None)
    return name if name and layer.HasField(name) else None


def _needs_data_upgrade(layer):
    name = _data_param_of(layer)
    return bool(name) and any(getattr(layer, name).HasField(f) for f in _TRANSFORM_FIELDS)


def _needs_batch_norm_upgrade(layer):
    # Unset multipliers default to 1, so this also catches specs that leave them out.
    return (layer.type == "BatchNorm" and len(layer.param) == 3
            and any(p.lr_mult != 0 or p.decay_mult != 0 for p in layer.param))


def upgrade_reasons(net):
    """Why `net` (a NetParameter) is not in the current format; empty when it is."""
    reasons = []
    if _has_v0_layers(net):
        reasons.append("V0 layers (layers { layer { ... } })")
    elif len(net.layers):
        reasons.append("V1 layers (layers { type: ENUM ... })")
    if any(_needs_data_upgrade(l) for l in list(net.layers) + list(net.layer)):
        reasons.append("transformation fields inside data_param/image_data_param/window_data_param")
    if len(net.input) or len(net.input_dim) or len(net.input_shape):
        reasons.append("net-level input fields (input/input_dim/input_shape)")
    if any(_needs_batch_norm_upgrade(l) for l in net.layer):
        reasons.append("BatchNorm param specs with learning rate or decay")
    return reasons


def upgrade_needed(net):
    """True when upgrade_net would change `net`."""
    return bool(upgrade_reasons(net))


# ------------------------------------------------------------------ V0 -> V1

def _fold_v0_padding(net, source):
    """Drop V0 "padding" layers, giving their pad to the conv/pool layer that reads them."""
    producer = {name: None for name in net.input}  # blob -> index of its last writer (None: net input)
    kept = []
    for i, entry in enumerate(net.layers):
        v0 = entry.layer
        if v0.type != "padding":
            kept.append(entry)
        for j, bottom in enumerate(entry.bottom):
            if bottom not in producer:
                raise NetspecError(f"{source}: V0 layer '{v0.name}' reads blob '{bottom}', "
                                   "which no earlier layer or net input produces")
            writer = producer[bottom]
            if writer is None or net.layers[writer].layer.type != "padding":
                continue
            pad_entry = net.layers[writer]
            if v0.type not in ("conv", "pool"):
                raise NetspecError(f"{source}: V0 padding layer '{pad_entry.layer.name}' feeds layer "
                                   f"'{v0.name}' of type '{v0.type}'; only conv and pool layers can absorb padding")
            if len(entry.bottom) != 1 or len(pad_entry.bottom) != 1 or len(pad_entry.top) != 1:
                raise NetspecError(f"{source}: V0 padding layer '{pad_entry.layer.name}' and the layer "
                                   f"'{v0.name}' it feeds must each have exactly one input blob "
                                   "(and the padding layer one output)")
            entry.layer.pad = pad_entry.layer.pad
            entry.bottom[j] = pad_entry.bottom[0]
        for top in entry.top:
            producer[top] = i
    return kept


def _assign(message, dotted, value, field_desc):
    """Set message.<dotted> = value, appending for repeated fields and copying messages."""
    *path, last = dotted.split(".")
    for part in path:
        message = getattr(message, part)
    target = message.DESCRIPTOR.fields_by_name[last]
    if target.is_repeated:
        getattr(message, last).append(value)
    elif target.message_type is not None:
        getattr(message, last).CopyFrom(value)
    elif target.enum_type is not None:
        # V0 and current enums share names (MAX, AVE, STOCHASTIC), not necessarily numbers.
        name = field_desc.enum_type.values_by_number[value].name
        setattr(message, last, target.enum_type.values_by_name[name].number)
    else:
        setattr(message, last, value)


def _v0_to_v1(entry, source):
    v0 = entry.layer
    if not v0.HasField("type"):
        raise NetspecError(f"{source}: V0 layer '{v0.name}' has no type")
    if v0.type not in V0_TYPE_NAMES:
        raise NetspecError(f"{source}: V0 layer '{v0.name}' has unknown type '{v0.type}' "
                           f"(known: {', '.join(sorted(V0_TYPE_NAMES))})")
    v1 = _V1()
    v1.bottom.extend(entry.bottom)
    v1.top.extend(entry.top)
    v1.type = _V1_TYPE_ENUM.values_by_name[V0_TYPE_NAMES[v0.type]].number
    for field, value in v0.ListFields():
        name = field.name
        if name == "type":
            continue
        if name == "name":
            v1.name = value
        elif name in _V0_COPIED:
            getattr(v1, name).extend(value)
        elif name in _V0_TRANSFORM_FIELDS:
            setattr(v1.transform_param, _V0_TRANSFORM_FIELDS[name], value)
        elif v0.type in _V0_FIELD_HOMES.get(name, {}):
            _assign(v1, _V0_FIELD_HOMES[name][v0.type], value, field)
        else:
            # Caffe logs this and carries on; the value has no place in the new format.
            glog.warning(f"{source}: V0 layer '{v0.name}': field '{name}' does not apply to "
                         f"type '{v0.type}'; dropped", _SOURCE)
    return v1


def _upgrade_v0(net, source):
    if not all(entry.HasField("layer") for entry in net.layers):
        raise NetspecError(f"{source}: the net mixes V0 entries (layers {{ layer {{ ... }} }}) with "
                           "V1 entries (layers { type: ... }); write every layer one way")
    glog.info(f"Upgrading {source}: V0 layers to V1", _SOURCE)
    upgraded = [_v0_to_v1(entry, source) for entry in _fold_v0_padding(net, source)]
    del net.layers[:]
    net.layers.extend(upgraded)


# ------------------------------------------------------------------ transformation fields

def _upgrade_data_transformation(layers):
    for layer in layers:
        name = _data_param_of(layer)
        if not name:
            continue
        params = getattr(layer, name)
        for field in _TRANSFORM_FIELDS:
            if params.HasField(field):
                setattr(layer.transform_param, field, getattr(params, field))
                params.ClearField(field)


# ------------------------------------------------------------------ V1 -> V2

def _v1_type_name(v1, index, source):
    what = f"{source}: V1 layer '{v1.name}' (entry {index + 1} of 'layers')"
    if not v1.HasField("type"):
        # An unset type, or in a binary file a type number this schema does not know.
        raise NetspecError(f"{what} has no type, or a type number that is not a V1 layer type")
    enum_name = _V1_TYPE_ENUM.values_by_number[v1.type].name
    if enum_name not in V1_TYPE_NAMES:
        raise NetspecError(f"{what} has type {enum_name}, which is not a layer type "
                           f"(known V1 types: {', '.join(sorted(V1_TYPE_NAMES))})")
    return V1_TYPE_NAMES[enum_name]


def _v1_to_v2(v1, layer, index, source):
    layer.type = _v1_type_name(v1, index, source)
    for field, value in v1.ListFields():
        name = field.name
        if name == "type":
            continue
        if name == "name":
            layer.name = value
        elif name in _V1_COPIED_LISTS:
            getattr(layer, name).extend(value)
        elif name in _V1_PARAM_SPEC_FIELDS:
            spec_field = _V1_PARAM_SPEC_FIELDS[name]
            while len(layer.param) < len(value):
                layer.param.add()
            for spec, item in zip(layer.param, value):
                setattr(spec, spec_field, item)  # DimCheckMode numbers are the same in both enums
        elif name.endswith("_param"):
            getattr(layer, name).CopyFrom(value)
        else:  # `layer`: a V0 leftover; _upgrade_v0 has already turned those into V1 entries
            raise NetspecError(f"{source}: V1 layer '{v1.name}' has a field '{name}' that cannot be upgraded")


def _upgrade_v1(net, source):
    glog.info(f"Upgrading {source}: V1 layers to the current format", _SOURCE)
    for index, v1 in enumerate(net.layers):  # check every type before changing anything
        _v1_type_name(v1, index, source)
    for index, v1 in enumerate(net.layers):
        _v1_to_v2(v1, net.layer.add(), index, source)
    del net.layers[:]


# ------------------------------------------------------------------ net inputs, BatchNorm

def _upgrade_input(net, source):
    names, dims, shapes = list(net.input), list(net.input_dim), list(net.input_shape)
    if (dims or shapes) and not names:
        raise NetspecError(f"{source}: input_dim/input_shape given without any 'input' blob names")
    if dims and shapes:
        raise NetspecError(f"{source}: give either input_shape or the deprecated input_dim, not both")
    if dims and len(dims) != 4 * len(names):
        raise NetspecError(f"{source}: {len(names)} input blob(s) need {4 * len(names)} input_dim "
                           f"values (4 per blob: N C H W), got {len(dims)}")
    if shapes and len(shapes) != len(names):
        raise NetspecError(f"{source}: {len(names)} input blob(s) but {len(shapes)} input_shape entries")
    if dims or shapes:
        # No shape at all means a legacy .caffemodel; dropping the names is enough there.
        layer = caffe_pb2.LayerParameter(name="input", type="Input")
        layer.top.extend(names)
        for i in range(len(names)):
            shape = layer.input_param.shape.add()
            if shapes:
                shape.CopyFrom(shapes[i])
            else:
                shape.dim.extend(dims[4 * i:4 * i + 4])
        existing = list(net.layer)
        del net.layer[:]
        net.layer.append(layer)  # first, so every later layer can read the inputs
        net.layer.extend(existing)
    for field in ("input", "input_dim", "input_shape"):
        net.ClearField(field)


def _upgrade_batch_norm(net):
    # Caffe (since BVLC/caffe PR #5184) zeroes the multipliers and keeps the
    # specs, so param names used for sharing survive.
    for layer in net.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            for spec in layer.param:
                spec.lr_mult = 0
                spec.decay_mult = 0


# ------------------------------------------------------------------ entry points

def upgrade_net(net, source="<net>"):
    """Upgrade a NetParameter in place from any older Caffe format; returns it."""
    if len(net.layer) and len(net.layers):
        raise NetspecError(f"{source}: the net mixes 'layer' entries (current format) with 'layers' "
                           "entries (old V1 format); write every layer one way "
                           "(`netspec upgrade` converts an old file)")
    if _has_v0_layers(net):
        _upgrade_v0(net, source)
    if any(_needs_data_upgrade(l) for l in list(net.layers) + list(net.layer)):
        glog.info(f"Upgrading {source}: moving transformation fields to transform_param", _SOURCE)
        _upgrade_data_transformation(net.layers)
        _upgrade_data_transformation(net.layer)
    if len(net.layers):
        _upgrade_v1(net, source)
    if len(net.input) or len(net.input_dim) or len(net.input_shape):
        _upgrade_input(net, source)
    _upgrade_batch_norm(net)
    return net


def solver_upgrade_reasons(solver):
    """Why `solver` (a SolverParameter) is not in the current format; empty when it is."""
    reasons = []
    if solver.HasField("solver_type"):
        reasons.append("solver_type enum (now the 'type' string)")
    for name, net in _embedded_nets(solver):
        reasons.extend(f"{name}: {r}" for r in upgrade_reasons(net))
    return reasons


def _embedded_nets(solver):
    for name in ("net_param", "train_net_param"):
        if solver.HasField(name):
            yield name, getattr(solver, name)
    for i, net in enumerate(solver.test_net_param):
        yield f"test_net_param[{i}]", net


def upgrade_solver(solver, source="<solver>"):
    """Upgrade a SolverParameter in place (solver_type -> type, embedded nets); returns it."""
    if solver.HasField("solver_type"):
        enum = solver.DESCRIPTOR.fields_by_name["solver_type"].enum_type
        old = enum.values_by_number[solver.solver_type].name
        new = _SOLVER_TYPE_NAMES[old]
        if solver.HasField("type") and solver.type != new:
            raise NetspecError(f"{source}: solver_type: {old} (deprecated) and type: \"{solver.type}\" "
                               "disagree; keep only type")
        solver.type = new
        solver.ClearField("solver_type")
    for name, net in _embedded_nets(solver):
        upgrade_net(net, f"{source} ({name})")
    return solver
