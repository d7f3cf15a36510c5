"""A fast reader for the plain prototxt most nets are written in; text_format stays the authority.

protobuf's text_format is pure Python (~100 us per layer line), so a 100k-layer net
took longer to parse than to build. This reader takes one regular-expression pass
over the text and accepts only a strict subset of the text format, on which it
builds exactly the message text_format builds: `name: value` and `name { ... }`
(colon optional before a brace), quoted strings without escapes or newlines,
decimal integers, plain decimal floats, enum values by name, `true`/`false`.
Anything else (escapes, adjacent strings, lists, `<>`, separators, hex, `inf`,
a field given twice, an unknown name, a value out of range, bytes fields, oneofs)
makes it return None, and the caller parses with text_format, which then either
reads what this reader would not or gives its own error with line and column.
"""
import re

from google.protobuf import descriptor

_FD = descriptor.FieldDescriptor

# Tokens as text_format splits them (a name or a number runs on over letters, digits, `_.+-`, so
# `1dim` is one bad token there and here, never `1` then `dim`), quoted strings with their quotes,
# `{`, `}` and `:`; any other character is a token of its own that nothing here accepts; the empty
# token is the end. The spaces and comments before a token are taken whole (greedy) and some
# alternative always matches after them, so the matches run on from one to the next, skipping
# nothing. Whitespace is Python's \s, as in text_format.
_TOKENS = re.compile(r"""
    (?:\s+|\#[^\n]*)*
    ( [A-Za-z_][0-9A-Za-z_+-]*
    | (?:[0-9+-]|\.[0-9])[0-9A-Za-z_.+-]*
    | "[^"\n\\]*"
    | '[^'\n\\]*'
    | \Z
    | .
    )""", re.X | re.S)
_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)\Z")
# No leading zero before a digit: text_format refuses `05` for a float as an octal spelling.
_FLOAT = re.compile(r"-?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")

_INTEGERS = {_FD.TYPE_INT32, _FD.TYPE_INT64, _FD.TYPE_UINT32, _FD.TYPE_UINT64, _FD.TYPE_SINT32,
             _FD.TYPE_SINT64, _FD.TYPE_FIXED32, _FD.TYPE_FIXED64, _FD.TYPE_SFIXED32, _FD.TYPE_SFIXED64}
_FLOATS = {_FD.TYPE_FLOAT, _FD.TYPE_DOUBLE}


_NONE = (None, False)


class _Unsure(Exception):
    """Outside the subset this reader vouches for: text_format decides."""


def _value(field, token):
    """The Python value text_format would assign for this scalar token."""
    t = field.type
    if t == _FD.TYPE_STRING:
        if len(token) >= 2 and token[0] in "\"'":
            return token[1:-1]
    elif t in _INTEGERS:
        if _INTEGER.match(token):
            return int(token)
    elif t in _FLOATS:
        if _FLOAT.match(token):
            return float(token)
    elif t == _FD.TYPE_BOOL:
        if token in ("true", "false"):
            return token == "true"
    elif t == _FD.TYPE_ENUM:
        value = field.enum_type.values_by_name.get(token)
        if value is not None:
            return value.number
    raise _Unsure


def _fields(desc, cache):
    fields = cache.get(desc)
    if fields is None:
        if desc.oneofs or desc.extension_ranges:
            raise _Unsure
        fields = cache[desc] = {name: (f, f.is_repeated) for name, f in desc.fields_by_name.items()}
    return fields


def _merge(tokens, message):
    if "" not in tokens:
        raise _Unsure
    n = tokens.index("")                # the end (once or twice); looking one or two past a token is safe
    cache = {}
    stack = []                          # (message, fields, singular names seen) of the open blocks
    fields, seen = _fields(message.DESCRIPTOR, cache), set()
    i = 0
    while i < n:
        token = tokens[i]
        if token == "}":
            if not stack:
                raise _Unsure
            message, fields, seen = stack.pop()
            i += 1
            continue
        field, repeated = fields.get(token, _NONE)     # only a plain name can be a field's
        if field is None:
            raise _Unsure
        if not repeated:
            if token in seen:
                raise _Unsure           # text_format refuses a singular field given twice
            seen.add(token)
        following = tokens[i + 1]
        if field.type == _FD.TYPE_MESSAGE:
            if following == ":":
                i += 1
                following = tokens[i + 1]
            if following != "{":
                raise _Unsure
            child = getattr(message, token).add() if repeated else getattr(message, token)
            if not repeated:
                child.SetInParent()     # `name {}` marks an empty message present, as text_format does
            stack.append((message, fields, seen))
            message, fields, seen = child, _fields(child.DESCRIPTOR, cache), set()
            i += 2
            continue
        if following != ":":
            raise _Unsure
        value = _value(field, tokens[i + 2])
        if tokens[i + 3][:1] in ("'", '"'):
            raise _Unsure               # adjacent strings are concatenated by text_format
        try:
            if repeated:
                getattr(message, token).append(value)
            else:
                setattr(message, token, value)
        except (TypeError, ValueError):
            raise _Unsure from None     # out of range for the field: text_format's message says so
        i += 3
    if stack:
        raise _Unsure


def parse(text, message):
    """`message` with `text` merged in when the text is plain prototxt; else None, and `message` holds
    whatever was read before the reader gave up (clear it before text_format parses into it)."""
    try:
        _merge(_TOKENS.findall(text), message)
    except _Unsure:
        return None
    return message
