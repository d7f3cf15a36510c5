"""Writing nets in Python, as pycaffe's net_spec: `L.Convolution(n.data, num_output=20, ...)`.

    from netspec import layers as L, params as P, NetSpec
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 28, 28]))
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type='xavier'))
    n.pool1 = L.Pooling(n.conv1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.relu1 = L.ReLU(n.pool1, in_place=True)
    print(n.to_proto())

Names are decided when the net is serialised. A keyword goes into the layer's
own `<type>_param` when that message has the field, else into LayerParameter;
keywords ending in `param` always go to LayerParameter. Dicts become
sub-messages, lists repeated fields; enums take a name or a number. Beyond
pycaffe: `top=` names tops explicitly, loss layers also look in loss_param
(SoftmaxWithLoss first in softmax_param), Deconvolution/Im2col use
convolution_param, RNN/LSTM recurrent_param, and `P.Phase.TEST` works.
"""
from collections import Counter, OrderedDict

import numpy as np
from google.protobuf import descriptor
from google.protobuf.message import Message

from .errors import NetspecError
from .proto import caffe_pb2
from .schema import enum_number, set_field

_FD = descriptor.FieldDescriptor
_LAYER_FIELDS = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name


def _param_fields():
    """Layer type -> its `*_param` field, from the message names (ConvolutionParameter -> Convolution)."""
    table = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if field.name.endswith("_param") and field.message_type is not None:
            table[field.message_type.name[:-len("Parameter")]] = field.name
    # Layers whose parameters live in another layer's message.
    table.update(Deconvolution="convolution_param", Im2col="convolution_param",
                 RNN="recurrent_param", LSTM="recurrent_param")
    return table


PARAM_FIELD = _param_fields()


class NetSpecTypeError(NetspecError, TypeError):
    """A layer call given something other than a Top as a bottom (pycaffe raises TypeError)."""


# ------------------------------------------------------------------ values into messages

def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _enum_value(field, value, where):
    try:
        return enum_number(field, _plain(value))
    except ValueError as e:
        raise NetspecError(f"{where}: {e}") from None


def _fill_message(message, value, where):
    if isinstance(value, Message):
        if value.DESCRIPTOR is not message.DESCRIPTOR:
            raise NetspecError(f"{where}: expected a {message.DESCRIPTOR.name}, "
                               f"got a {value.DESCRIPTOR.name}")
        message.MergeFrom(value)
        return
    if not isinstance(value, dict):
        raise NetspecError(f"{where}: expected a dict for message {message.DESCRIPTOR.name}, "
                           f"got {type(value).__name__} {value!r}")
    message.SetInParent()          # `dropout_param=dict()` is present even when empty
    for key, item in value.items():
        assign_field(message, key, item, where)


def assign_field(message, name, value, where):
    """Set field `name` of `message` from a Python value (pycaffe's assign_proto, with checks)."""
    field = message.DESCRIPTOR.fields_by_name.get(name)
    if field is None:
        raise NetspecError(f"{where}: {message.DESCRIPTOR.name} has no field '{name}'")
    where_field = f"{where}: field '{name}' of {message.DESCRIPTOR.name}"
    if field.is_repeated:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
    elif isinstance(value, (list, tuple)):
        raise NetspecError(f"{where_field} is not repeated; give one value, not a list")
    else:
        items = [value]
    target = getattr(message, name)
    for item in items:
        if field.type == _FD.TYPE_MESSAGE:
            _fill_message(target.add() if field.is_repeated else target, item, where)
            continue
        if field.type == _FD.TYPE_ENUM:
            item = _enum_value(field, item, where)
        try:
            set_field(message, field, _plain(item))
        except (TypeError, ValueError) as e:
            raise NetspecError(f"{where_field}: cannot take {item!r} ({e})") from None


def assign_proto(proto, name, value):
    """pycaffe's assign_proto: set field `name` of `proto` from plain Python values (dicts, lists)."""
    assign_field(proto, name, value, "assign_proto")


def param_name_dict():
    """pycaffe's {layer type: param field prefix}, e.g. {'Convolution': 'convolution'}, from the schema."""
    return {field.message_type.name[:-len("Parameter")]: field.name[:-len("_param")]
            for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields
            if field.name.endswith("_param") and field.message_type is not None
            and field.message_type.name.endswith("Parameter")}


def _layer_template(type_name, params):
    """A LayerParameter holding a call's keyword arguments (names, bottoms and tops come later)."""
    layer = caffe_pb2.LayerParameter(type=type_name)
    where = f"L.{type_name}"
    own = [PARAM_FIELD[type_name]] if type_name in PARAM_FIELD else []
    if type_name == "SoftmaxWithLoss":
        own.append("softmax_param")
    if type_name.endswith("Loss"):
        own.append("loss_param")
    for key, value in params.items():
        if key.endswith("param"):
            assign_field(layer, key, value, where)
            continue
        for param_field in own:
            if key in getattr(layer, param_field).DESCRIPTOR.fields_by_name:
                assign_field(getattr(layer, param_field), key, value, f"{where} {param_field}")
                break
        else:
            if key not in _LAYER_FIELDS:
                places = " or ".join(own + ["LayerParameter"])
                raise NetspecError(f"{where}: unknown argument '{key}' (no such field in {places})")
            if key in ("bottom", "type"):
                raise NetspecError(f"{where}: '{key}' is not a keyword argument; pass bottoms as "
                                   "positional arguments (tops of earlier layers)")
            assign_field(layer, key, value, where)
    return layer


# ------------------------------------------------------------------ the graph being written

class Top:
    """One output of a layer call; pass it to later layers as a bottom."""

    def __init__(self, fn, n):
        self.fn, self.n = fn, n

    def to_proto(self):
        """A NetParameter holding this top's layer and everything it depends on."""
        return to_proto(self)

    def _to_proto(self, layers, names, autonames):
        return self.fn._to_proto(layers, names, autonames)

    def __repr__(self):
        return f"<Top {self.n} of L.{self.fn.type_name}>"


class Function:
    """One layer call: its type, bottoms, keyword arguments and tops."""

    def __init__(self, type_name, inputs, params):
        self.type_name = type_name
        self.params = dict(params)
        for i, inp in enumerate(inputs):
            if not isinstance(inp, Top):
                # pycaffe's words and type: its tests match this line exactly.
                raise NetSpecTypeError(f"{type_name} input {i} is not a Top (type is {type(inp)})")
        self.inputs = tuple(inputs)
        explicit = self.params.pop("top", None)
        if isinstance(explicit, str):
            explicit = [explicit]
        self.explicit_tops = list(explicit) if explicit is not None else None
        default_ntop = len(self.explicit_tops) if self.explicit_tops is not None else 1
        self.ntop = int(self.params.pop("ntop", default_ntop))
        self.in_place = bool(self.params.pop("in_place", False))
        self.name = self.params.pop("name", None)
        if self.explicit_tops is not None and len(self.explicit_tops) != self.ntop:
            raise NetspecError(f"L.{type_name}: top= names {len(self.explicit_tops)} tops but ntop={self.ntop}")
        if self.in_place and (self.explicit_tops is not None or self.ntop > len(self.inputs)):
            raise NetspecError(f"L.{type_name}: in_place=True writes each top over its bottom; give "
                               f"at least {self.ntop} bottoms and no top= names")
        self.template = _layer_template(type_name, self.params)
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _top_name(self, top, names, autonames):
        if self.explicit_tops is not None:      # `top=` wins over the NetSpec attribute name
            return self.explicit_tops[top.n]
        if top not in names:
            autonames[self.type_name] += 1
            names[top] = f"{self.type_name}{autonames[self.type_name]}"
        return names[top]

    def _layer_name(self, names, autonames):
        # A layer takes the name of its first top, as in pycaffe; a layer without tops counts its own.
        if self.name is not None:
            return self.name
        if self not in names:
            if self.ntop > 0:
                names[self] = self._top_name(self.tops[0], names, autonames)
            else:
                autonames[self.type_name] += 1
                names[self] = f"{self.type_name}{autonames[self.type_name]}"
        return names[self]

    def _to_proto(self, layers, names, autonames):
        if self in layers:
            return
        bottoms = []
        for inp in self.inputs:
            inp._to_proto(layers, names, autonames)
            bottoms.append(layers[inp.fn].top[inp.n])
        layer = caffe_pb2.LayerParameter()
        layer.CopyFrom(self.template)
        layer.bottom.extend(bottoms)
        if self.in_place:
            layer.top.extend(bottoms[:self.ntop])
        else:
            layer.top.extend(self._top_name(top, names, autonames) for top in self.tops)
        layer.name = self._layer_name(names, autonames)
        layers[self] = layer


def to_proto(*tops):
    """A NetParameter with the layers producing `tops` (and their inputs), intermediate tops auto-named."""
    layers, autonames = OrderedDict(), Counter()
    for top in tops:
        fn = top if isinstance(top, Function) else top.fn
        fn._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


class NetSpec:
    """Tops named by assignment: `n.conv1 = L.Convolution(...)` names the top (and layer) `conv1`."""

    def __init__(self):
        object.__setattr__(self, "tops", OrderedDict())

    def __setattr__(self, name, value):
        if not isinstance(value, (Top, Function)):
            raise NetspecError(f"NetSpec.{name}: expected a layer's top, got {type(value).__name__}; "
                               "a layer with several tops returns a tuple: `n.a, n.b = L.X(..., ntop=2)`")
        self.tops[name] = value

    def __getattr__(self, name):
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(f"NetSpec has no top named '{name}'") from None

    def __setitem__(self, name, value):
        self.__setattr__(name, value)

    def __getitem__(self, name):
        return self.tops[name]

    def __delitem__(self, name):
        del self.tops[name]

    def __contains__(self, name):
        return name in self.tops

    def keys(self):
        return list(self.tops)

    def vals(self):
        return list(self.tops.values())

    def update(self, name, value):
        self.__setattr__(name, value)

    def to_proto(self):
        """The NetParameter: layers in the order their named tops were assigned, inputs first."""
        names = {top: name for name, top in self.tops.items()}
        layers, autonames = OrderedDict(), Counter()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


# ------------------------------------------------------------------ L and P

class Layers:
    """`L.Type(*bottoms, **params)`: one top, a tuple of tops (ntop > 1), or the call itself (ntop=0)."""

    def __getattr__(self, type_name):
        if type_name.startswith("_"):
            raise AttributeError(type_name)

        def layer_fn(*bottoms, **params):
            fn = Function(type_name, bottoms, params)
            if fn.ntop == 0:
                return fn
            return fn.tops[0] if fn.ntop == 1 else fn.tops
        layer_fn.__name__ = type_name
        return layer_fn


class _EnumNamespace:
    def __init__(self, label, lookup):
        self._label, self._lookup = label, lookup

    def __getattr__(self, value_name):
        if value_name.startswith("__"):
            raise AttributeError(value_name)
        try:
            return self._lookup(value_name)
        except (AttributeError, KeyError, ValueError):
            raise AttributeError(f"{self._label} has no value '{value_name}'") from None


class Parameters:
    """`P.Pooling.MAX` is caffe_pb2.PoolingParameter.MAX; `P.Phase.TEST` is caffe_pb2.TEST."""

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        message = getattr(caffe_pb2, name + "Parameter", None)
        if message is not None:
            return _EnumNamespace(name + "Parameter", lambda v: getattr(message, v))
        enum = caffe_pb2.DESCRIPTOR.enum_types_by_name.get(name)
        if enum is not None:
            return _EnumNamespace(name, lambda v: enum.values_by_name[v].number)
        raise AttributeError(f"caffe_pb2 has no message {name}Parameter and no enum {name}")


layers = Layers()
params = Parameters()
