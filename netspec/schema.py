"""Reading and writing Caffe's messages: prototxt, YAML and binary protobuf.

Prototxt goes through protobuf's own text_format. YAML is a second spelling of
the same schema: a mapping per message, lists for repeated fields, enum values
by name. Every malformed file becomes a ParseError reading `path:line:col: message`.
"""
import difflib
import os
import re

import numpy as np
import yaml
from google.protobuf import descriptor, text_format
from google.protobuf.message import DecodeError

from . import dialects, fast_text
from .durable import write_file
from .errors import NetspecError, ParseError
from .integrity import seal, unseal
from .proto import caffe_pb2
from .reading import MAX_TEXT_BYTES, read_bytes
from .upgrade import upgrade_net, upgrade_solver

YAML_SUFFIXES = (".yaml", ".yml")
# libyaml's loader when present: an order of magnitude faster on large nets, same marks.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_FD = descriptor.FieldDescriptor


_BOM = b"\xef\xbb\xbf"


def _read_text(path):
    """A net or solver file's text: a regular file (or /dev/stdin), at most MAX_TEXT_BYTES, UTF-8."""
    data = read_bytes(path, "a file", limit=MAX_TEXT_BYTES, allow_stdin=True)
    if data.startswith(_BOM):
        data = data[len(_BOM):]          # a UTF-8 byte order mark (Windows editors): not part of the text
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        from .hdf5 import has_signature
        if has_signature(data[:1 << 20]):
            raise NetspecError(f"{path}: an HDF5 file (.caffemodel.h5 weights are read with --weights)") from None
        raise NetspecError(f"{path}: not a text file ({e.reason} at byte {e.start}); "
                           "binary files (.caffemodel) are read with --weights") from None


# ------------------------------------------------------------------ prototxt

_TEXT_ERROR = re.compile(r"^(\d+):(\d+)\s*:\s*(.*)$", re.S)


def _in_dialects(parse, text, message, path, dialect):
    """Parse in the named fork dialect, or in netspec's schema and then each fork's.

    A file that fails in netspec's schema but parses in a fork's (SegNet's
    `bn_param { bn_mode: ... }`) is that fork's; the error reported for a file
    no schema reads is netspec's own.
    """
    if dialect is not None:
        forked = parse(text, dialects.dialect(dialect).message_class(message.DESCRIPTOR.name)(), path)
        message.MergeFrom(dialects.dialect(dialect).to_netspec(forked))
        return message
    try:
        # Into a fresh message: a failed parse leaves what it read before the error.
        message.MergeFrom(parse(text, type(message)(), path))
        return message
    except ParseError:
        for fork in dialects.dialects_for(message.DESCRIPTOR.name):
            try:
                forked = parse(text, fork.message_class(message.DESCRIPTOR.name)(), path)
            except ParseError:
                continue
            message.MergeFrom(fork.to_netspec(forked))
            return message
        raise


def parse_prototxt(text, message, path="<string>", dialect=None):
    """Merge prototxt `text` into `message`; ParseError on malformed input.

    `dialect` names a Caffe fork's schema (see netspec.dialects) to read the
    text with; by default a text that netspec's schema rejects is tried in each.
    """
    return _in_dialects(_parse_prototxt, text, message, path, dialect)


def _parse_prototxt(text, message, path):
    """Parse into `message`, a fresh one (_in_dialects makes it)."""
    if fast_text.parse(text, message) is not None:
        return message                # plain prototxt, read as text_format reads it (fast_text.py)
    message.Clear()                   # what the fast reader set before it gave up
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        line, col = e.GetLine(), e.GetColumn()
        msg = str(e)
        m = _TEXT_ERROR.match(msg)
        if m:
            line, col, msg = int(m.group(1)), int(m.group(2)), m.group(3)
        raise ParseError(path, line, col, _explain_text_error(msg.strip(), text, line, col)) from None
    return message


_POOL = caffe_pb2.DESCRIPTOR.pool
_NO_FIELD = re.compile(r'Message type "([\w.]+)" has no field named "(\w+)"\.$')
_NO_ENUM_VALUE = re.compile(r'Enum type "([\w.]+)" has no value named (\w+)\.$')


def _near_field(message_name, field, msg):
    """protobuf's unknown-field message, with the field the user probably meant."""
    try:
        names = list(_POOL.FindMessageTypeByName(message_name).fields_by_name)
    except KeyError:
        return msg
    near = difflib.get_close_matches(field, names, n=1)
    return f'{msg[:-1]} (did you mean "{near[0]}"?)' if near else msg


def _unclosed_block(text):
    """`name {` and the line of the innermost block still open at the end of the text, or None."""
    stack, line, i = [], 1, 0
    while i < len(text):
        c = text[i]
        if c == "\n":
            line += 1
        elif c == "#":
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        elif c in "\"'":
            j = i + 1
            while j < len(text) and text[j] not in (c, "\n"):
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            continue
        elif c == "{":
            name = re.search(r"(\w+)\s*:?\s*$", text[:i])
            stack.append((f"{name.group(1) if name else ''} {{".strip(), line))
        elif c == "}" and stack:
            stack.pop()
        i += 1
    return stack[-1] if stack else None


def _explain_text_error(msg, text, line, col):
    """protobuf's message plus the hint that locates or explains it."""
    m = _NO_FIELD.search(msg)
    if m:
        return msg[:m.start()] + _near_field(m.group(1), m.group(2), m.group(0))
    m = _NO_ENUM_VALUE.search(msg)
    if m:
        try:
            values = ", ".join(v.name for v in _POOL.FindEnumTypeByName(m.group(1)).values)
            return f"{msg[:-1]} (expected one of: {values})"
        except KeyError:
            return msg
    rest = [s.strip() for s in text.split("\n")[line:]]
    if msg == 'Expected "}".' and all(not s or s.startswith("#") for s in rest):
        block = _unclosed_block(text)
        if block:
            return f"Expected \"}}\" at the end of the file: the block '{block[0]}' opened at line {block[1]} is never closed"
    m = re.search(r"Value out of range: -", msg)
    if m and line:
        field = re.search(r"(\w+)\s*:\s*$", text.splitlines()[line - 1][:col - 1])
        if field:
            return f"{msg} (field '{field.group(1)}' takes no negative values)"
    return msg


# ------------------------------------------------------------------ YAML

def _mark(node):
    return node.start_mark.line + 1, node.start_mark.column + 1


def enum_number(field, value):
    """What enum `field` stores for `value`, a value name or number; ValueError naming the choices.

    The one conversion of enum values, for the YAML reader and the NetSpec builder alike."""
    enum = field.enum_type
    if isinstance(value, str):
        found = enum.values_by_name.get(value)
        if found is None:
            names = ", ".join(v.name for v in enum.values)
            raise ValueError(f"unknown value '{value}' for enum field '{field.name}' (expected one of: {names})")
        return found.number
    if isinstance(value, bool) or not isinstance(value, int) or value not in enum.values_by_number:
        names = ", ".join(f"{v.name}={v.number}" for v in enum.values)
        raise ValueError(f"invalid value {value!r} for enum field '{field.name}' (expected one of: {names})")
    return value


def set_field(message, field, value):
    """message.<field> = value, or appended when the field is repeated (protobuf's TypeError/ValueError pass on)."""
    if field.is_repeated:
        getattr(message, field.name).append(value)
    else:
        setattr(message, field.name, value)


def _scalar(field, node, path, owner):
    line, col = _mark(node)
    if not isinstance(node, yaml.ScalarNode):
        raise ParseError(path, line, col, f"field '{field.name}' of {owner} takes a single value, not a "
                         f"{'list' if isinstance(node, yaml.SequenceNode) else 'mapping'}")
    text = node.value
    try:
        if field.type == _FD.TYPE_ENUM:
            return enum_number(field, text)
        if field.type == _FD.TYPE_BOOL:
            lowered = text.lower()
            if lowered in ("true", "yes", "on", "1"):
                return True
            if lowered in ("false", "no", "off", "0"):
                return False
            raise ValueError(f"field '{field.name}' expects true or false, got '{text}'")
        if field.type in (_FD.TYPE_FLOAT, _FD.TYPE_DOUBLE):
            special = {".inf": "inf", "+.inf": "inf", "-.inf": "-inf", ".nan": "nan"}
            return float(special.get(text.lower(), text))
        if field.type == _FD.TYPE_STRING:
            return text
        if field.type == _FD.TYPE_BYTES:
            return text.encode("utf-8")
        return int(text, 0) if isinstance(text, str) else int(text)
    except ValueError as e:
        msg = str(e)
        if "invalid literal" in msg or "could not convert" in msg:
            msg = f"field '{field.name}' of {owner} expects a number, got '{text}'"
        raise ParseError(path, line, col, msg) from None


class _YamlBudget:
    """Counts the nodes a YAML document expands to: aliases can make an 80 KB file name billions
    (a "billion laughs" bomb), or name themselves. Both are refused, with the alias's place."""

    def __init__(self, text):
        self.left = 4 * len(text) + 10_000   # a node takes at least a few characters unless aliased
        self.open = set()                # ids of the mappings being merged: an alias back to one is a cycle

    def spend(self, n, node, path):
        self.left -= n
        if self.left < 0:
            line, col = _mark(node)
            raise ParseError(path, line, col, "malformed YAML: its aliases expand to far more nodes than the "
                                              "file holds (an alias bomb?); write the repeated parts out")

    def enter(self, node, path):
        self.spend(1, node, path)
        if id(node) in self.open:
            line, col = _mark(node)
            raise ParseError(path, line, col, "malformed YAML: an alias refers to a mapping that contains it")
        self.open.add(id(node))


def _merge_yaml(node, message, path, budget):
    owner = message.DESCRIPTOR.full_name
    if not isinstance(node, yaml.MappingNode):
        line, col = _mark(node)
        raise ParseError(path, line, col, f"expected a mapping for message {owner}")
    budget.enter(node, path)
    fields = message.DESCRIPTOR.fields_by_name
    seen = {}
    for key_node, value_node in node.value:
        name = key_node.value
        if name in seen:
            line, col = _mark(key_node)
            first = "%d:%d" % _mark(seen[name])
            raise ParseError(path, line, col, f"field '{name}' of {owner} is given twice in one mapping (first at "
                                              f"{first}); give a list for a repeated field")
        seen[name] = key_node
        field = fields.get(name)
        if field is None:
            line, col = _mark(key_node)
            raise ParseError(path, line, col, _near_field(owner, name, f'Message type "{owner}" has no field named "{name}".'))
        items = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
        budget.spend(len(items), value_node, path)
        if not field.is_repeated and isinstance(value_node, yaml.SequenceNode):
            line, col = _mark(value_node)
            raise ParseError(path, line, col, f"field '{name}' of {owner} is not repeated; give one value, not a list")
        for item in items:
            if field.type == _FD.TYPE_MESSAGE:
                sub = getattr(message, name).add() if field.is_repeated else getattr(message, name)
                sub.SetInParent()        # `dropout_param: {}` is present even when empty
                if isinstance(item, yaml.ScalarNode) and item.value in ("", "~", "null"):
                    continue
                _merge_yaml(item, sub, path, budget)
            else:
                value = _scalar(field, item, path, owner)
                try:
                    set_field(message, field, value)
                except (ValueError, TypeError) as e:
                    line, col = _mark(item)
                    raise ParseError(path, line, col, f"field '{name}' of {owner}: {e}") from None
    budget.open.discard(id(node))
    return message


def parse_yaml(text, message, path="<string>", dialect=None):
    """Merge YAML `text` into `message`; ParseError on malformed input (dialects as parse_prototxt)."""
    return _in_dialects(_parse_yaml, text, message, path, dialect)


def _parse_yaml(text, message, path):
    try:
        root = yaml.compose(text, Loader=_YAML_LOADER)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        msg = f"malformed YAML: {e.problem or e.context}"
        ctx = e.context_mark
        if e.problem and e.context and ctx and (ctx.line, ctx.column) != (mark.line, mark.column):
            msg += f" ({e.context} started at {ctx.line + 1}:{ctx.column + 1})"
        if mark and text[mark.index:mark.index + 1] == "\t":
            msg += " (a tab: indent YAML with spaces)"
        raise ParseError(path, line, col, msg) from None
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        col = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        raise ParseError(path, line, col, f"malformed YAML: unacceptable character #x{e.character:04x}: "
                         f"{e.reason}") from None
    except yaml.YAMLError as e:
        raise ParseError(path, 0, 0, f"malformed YAML: {e}") from None
    if root is None:
        return message
    return _merge_yaml(root, message, path, _YamlBudget(text))


def message_to_yaml(message):
    """The YAML spelling of a message (fields in schema order, enums by name)."""
    return yaml.safe_dump(_to_plain(message), sort_keys=False, default_flow_style=None, width=100)


def _to_plain(message):
    out = {}
    for field, value in message.ListFields():
        if field.is_repeated:
            out[field.name] = [_plain_value(field, v) for v in value]
        else:
            out[field.name] = _plain_value(field, value)
    return out


def _plain_value(field, value):
    if field.type == _FD.TYPE_MESSAGE:
        return _to_plain(value)
    if field.type == _FD.TYPE_ENUM:
        return field.enum_type.values_by_number[value].name
    if field.type == _FD.TYPE_FLOAT:
        # float32 values print with the fewest digits that read back to the same float32.
        return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))
    if field.type == _FD.TYPE_BYTES:
        return value.decode("latin-1")
    return value


# ------------------------------------------------------------------ files

def read_text_message(path, message, dialect=None):
    """Fill `message` from a prototxt or YAML file (chosen by extension)."""
    path = os.fspath(path)
    text = _read_text(path)
    if path.lower().endswith(YAML_SUFFIXES):
        return parse_yaml(text, message, path, dialect)
    return parse_prototxt(text, message, path, dialect)


_BINARY_SUFFIX = {"NetParameter": ".caffemodel", "SolverState": ".solverstate", "BlobProto": ".binaryproto"}


def read_binary_payload(path, what):
    """The protobuf bytes of a binary file: a regular file, size-bounded, its integrity record checked."""
    path = os.fspath(path)
    data = read_bytes(path, what)
    from .hdf5 import has_signature
    if has_signature(data[:1 << 20]):
        raise NetspecError(f"{path}: an HDF5 file, not {what}; Caffe's HDF5 weights (.caffemodel.h5) "
                           "go to --weights / Net.copy_from, its solver states (.solverstate.h5) to --snapshot")
    return unseal(data, path)[0]


def parse_binary(path, data, message):
    """Fill `message` from protobuf bytes read from `path`, with a clear error for anything else."""
    try:
        message.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            raise NetspecError(f"{path}: a text file, not a binary {message.DESCRIPTOR.name} "
                               f"({_BINARY_SUFFIX.get(message.DESCRIPTOR.name, 'binary protobuf')})") from None
        raise NetspecError(f"{path}: not a valid binary {message.DESCRIPTOR.name} "
                           f"(truncated or corrupted file: {e})") from None
    return message


def read_binary_message(path, message, dialect=None):
    """Fill `message` from a binary protobuf file (a .caffemodel, .solverstate, .binaryproto).

    A NetParameter (.caffemodel) written by a Caffe fork that reuses BVLC's
    field numbers is recognised (netspec.dialects.detect_binary_dialect) and
    read in that fork's schema, unless `dialect` names the schema to use.
    """
    path, name = os.fspath(path), message.DESCRIPTOR.name
    what = f"a binary {name} ({_BINARY_SUFFIX[name]})" if name in _BINARY_SUFFIX else f"a binary {name}"
    data = read_binary_payload(path, what)
    if dialect is None:
        parse_binary(path, data, message)
        if message.DESCRIPTOR.full_name == "caffe.NetParameter":
            dialect = dialects.detect_binary_dialect(message)
        if dialect is None:
            return message
        message.Clear()
    fork = dialects.dialect(dialect)
    forked = parse_binary(path, data, fork.message_class(name)())
    message.MergeFrom(fork.to_netspec(forked))
    return message


def write_binary_message(path, message):
    """Write a message as Caffe's binary format, with netspec's integrity record (integrity.py) in front."""
    write_file(path, seal(message.SerializeToString()))


def _read_upgraded(path_or_param, message_class, upgrade):
    if isinstance(path_or_param, message_class):
        message = message_class()
        message.CopyFrom(path_or_param)
        source = f"<{message_class.DESCRIPTOR.name}>"
    else:
        source = os.fspath(path_or_param)
        message = read_text_message(source, message_class())
    return upgrade(message, source)


def read_net(path_or_param):
    """A NetParameter from a path (prototxt/YAML) or a NetParameter, upgraded from old formats."""
    return _read_upgraded(path_or_param, caffe_pb2.NetParameter, upgrade_net)


def read_solver(path_or_param):
    """A SolverParameter from a path (prototxt/YAML) or a SolverParameter, upgraded from old formats."""
    return _read_upgraded(path_or_param, caffe_pb2.SolverParameter, upgrade_solver)


# Every file netspec writes goes through durable.write_file; the old name stays importable.
write_atomically = write_file


def write_text_message(path, message):
    path = os.fspath(path)
    if path.lower().endswith(YAML_SUFFIXES):
        text = message_to_yaml(message)
    else:
        text = text_format.MessageToString(message)
    write_file(path, text.encode("utf-8"))
