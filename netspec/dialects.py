"""Caffe forks' schemas ("dialects") and their conversion to netspec's messages.

netspec's caffe.proto is BVLC's schema plus every fork field whose number is
free there. Some forks give BVLC's numbers to their own fields (PSPNet's
interp_param is 143, BVLC's input_param), and PSPNet and SegNet both spell a
field `bn_param`, with different messages. netspec keeps such fields at its own
numbers under their fork names; the fork's numbers live in the dialect messages
of caffe.proto (`PSPNetLayerFields`, ...). A dialect's LayerParameter is
netspec's minus the fields sharing a number or a name with the dialect's,
plus the dialect's. A file read in a dialect is converted to netspec's
messages (one internal form): a field keeps its number where netspec has a
field of the same kind there, else goes to netspec's field of the same name.
"""
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor

from .proto import caffe_pb2

# dialect: (the fork, {netspec message: the dialect message replacing its fields}, layer
# types only that fork has, used to recognise its binary files)
DIALECTS = {
    "pspnet": ("hszhao/PSPNet",
               {"LayerParameter": "PSPNetLayerFields", "TransformationParameter": "PSPNetTransformationFields"},
               ("Interp", "SegAccuracy", "MatWrite", "DenseCRF", "DomainTransform", "AdaptiveBiasChannel")),
    "segnet": ("alexgkendall/caffe-segnet", {"LayerParameter": "SegNetLayerFields"},
               ("Upsample", "DenseImageData")),
    "ssd": ("weiliu89/caffe", {"SolverParameter": "SSDSolverFields"}, ()),
}

_PACKAGE = caffe_pb2.DESCRIPTOR.package


def _kind(field):
    """What a field holds, whatever its name and number."""
    target = field.message_type or field.enum_type
    return field.type, field.is_repeated, target.full_name if target else None


class Dialect:
    """One fork's schema, built from netspec's, and the conversion of its messages."""

    def __init__(self, name):
        self.name = name
        self.fork, self.overlays, self.layer_types = DIALECTS[name]
        file_proto = descriptor_pb2.FileDescriptorProto.FromString(caffe_pb2.DESCRIPTOR.serialized_pb)
        messages = {m.name: m for m in file_proto.message_type}
        for target, overlay in self.overlays.items():
            replaced = messages[target]
            extra = messages[overlay].field
            names, numbers = {f.name for f in extra}, {f.number for f in extra}
            kept = [f for f in replaced.field if f.name not in names and f.number not in numbers]
            del replaced.field[:]
            replaced.field.extend(kept)
            replaced.field.extend(extra)
        pool = descriptor_pool.DescriptorPool()
        pool.Add(file_proto)
        self._pool = pool
        self.changed = self._containing({f"{_PACKAGE}.{t}" for t in self.overlays}, file_proto)
        self._targets = {}

    @staticmethod
    def _containing(changed, file_proto):
        """Full names of the changed messages and of every message that holds one, at any depth."""
        changed = set(changed)
        grew = True
        while grew:
            grew = False
            for message in file_proto.message_type:
                full = f"{_PACKAGE}.{message.name}"
                if full not in changed and any(f.type_name.lstrip(".") in changed for f in message.field):
                    changed.add(full)
                    grew = True
        return changed

    def message_class(self, name):
        """The dialect's class for the message `name` (e.g. "NetParameter")."""
        return message_factory.GetMessageClass(self._pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))

    def to_netspec(self, message):
        """The netspec message equal to a message of this dialect."""
        out = getattr(caffe_pb2, message.DESCRIPTOR.name)()
        self._convert(message, out)
        return out

    def from_netspec(self, message):
        """This dialect's spelling of a netspec message (what the fork's tools read)."""
        out = self.message_class(message.DESCRIPTOR.name)()
        self._convert(message, out)
        return out

    def _target(self, field, destination):
        key = (field.containing_type.full_name, field.number, destination.DESCRIPTOR.file.pool is self._pool)
        target = self._targets.get(key)
        if target is None:
            fields = destination.DESCRIPTOR
            target = fields.fields_by_number.get(field.number)
            if target is None or _kind(target) != _kind(field):
                target = fields.fields_by_name.get(field.name)
            if target is None or _kind(target) != _kind(field):
                target = False      # e.g. netspec's segnet_bn_param in PSPNet's dialect: no place for it
            self._targets[key] = target
        return target

    def _convert(self, source, destination):
        for field, value in source.ListFields():
            target = self._target(field, destination)
            if not target:
                continue
            if field.type != FieldDescriptor.TYPE_MESSAGE:
                if field.is_repeated:
                    getattr(destination, target.name).extend(value)
                else:
                    setattr(destination, target.name, value)
                continue
            # Messages the dialect leaves alone (BlobProto, ...) go over as bytes, in one step.
            deep = field.message_type.full_name in self.changed
            items = value if field.is_repeated else [value]
            for item in items:
                sub = getattr(destination, target.name)
                sub = sub.add() if field.is_repeated else sub
                if deep:
                    sub.SetInParent()
                    self._convert(item, sub)
                else:
                    sub.MergeFromString(item.SerializeToString())


_CACHE = {}


def dialect(name):
    """The Dialect called `name` (one of DIALECTS), built once."""
    if name not in DIALECTS:
        raise ValueError(f"unknown schema dialect '{name}' (known: {', '.join(DIALECTS)})")
    if name not in _CACHE:
        _CACHE[name] = Dialect(name)
    return _CACHE[name]


def dialects_for(message_name):
    """The dialects that change the message `message_name` or something inside it."""
    full = f"{_PACKAGE}.{message_name}"
    return [dialect(name) for name in DIALECTS if full in dialect(name).changed]


def detect_binary_dialect(net):
    """The dialect a binary NetParameter read with netspec's schema was written in, or None.

    A fork's layer (PSPNet's Interp, SegNet's Upsample) carrying a field at one of the
    numbers its fork takes from BVLC (read here as input_param, embed_param, ...) says
    the file is that fork's.
    """
    for name in DIALECTS:
        candidate = dialect(name)
        overlay = candidate.overlays.get("LayerParameter")
        if not overlay or not candidate.layer_types:
            continue
        numbers = {f.number for f in caffe_pb2.DESCRIPTOR.message_types_by_name[overlay].fields}
        clashing = [f.name for f in caffe_pb2.LayerParameter.DESCRIPTOR.fields if f.number in numbers]
        for layer in net.layer:
            if layer.type in candidate.layer_types and any(layer.HasField(f) for f in clashing):
                return name
    return None
