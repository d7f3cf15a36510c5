"""The flags every Caffe tool takes from gflags and glog, handled before the command line is parsed.

    netspec train --flagfile=train.flags            # one flag per line, as gflags reads them
    netspec train --solver=s.prototxt --log_dir=logs  # glog's log files as well as stderr

A flagfile holds one `--flag=value` per line; blank lines and lines starting
with `#` or `//` are skipped, and a `--flagfile=` inside one reads that file in
its place. Flags count in order, so one given after `--flagfile` overrides the file.
"""
import os

from .errors import NetspecError

_MAX_DEPTH = 16
_MAX_BYTES = 1 << 20


def _flag_value(arg, name, following):
    """The value of `--name=v`, `-name=v`, `--name v` or `-name v` at arg, and how many args it used; else None."""
    for dashes in ("--", "-"):
        if arg.startswith(f"{dashes}{name}="):
            return arg.split("=", 1)[1], 1
        if arg == f"{dashes}{name}":
            if following is None:
                raise NetspecError(f"{arg} needs a value")
            return following, 2
    return None


def _read_flagfile(path, depth, seen):
    real = os.path.realpath(path)
    if depth > _MAX_DEPTH or real in seen:
        raise NetspecError(f"{path}: --flagfile files include each other in a loop")
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_BYTES + 1)
    except OSError as e:
        raise NetspecError(f"{path}: cannot read the flagfile ({e.strerror or e})") from None
    if len(data) > _MAX_BYTES:
        raise NetspecError(f"{path}: flagfile is larger than {_MAX_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NetspecError(f"{path}: flagfile is not UTF-8 text ({e.reason} at byte {e.start})") from None
    flags = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", "//")):
            continue
        if not line.startswith("-"):
            raise NetspecError(f"{path}:{number}:1: expected a flag such as --solver=FILE, got {line!r}")
        flags.append(line)
    return expand_flagfiles(flags, depth + 1, seen | {real})


def _scan(argv, name):
    """Yield ("arg", arg) for each argument, or ("flag", value) for each --name flag (its value taken)."""
    i = 0
    while i < len(argv):
        found = _flag_value(argv[i], name, argv[i + 1] if i + 1 < len(argv) else None)
        if found is None:
            yield "arg", argv[i]
            i += 1
        else:
            yield "flag", found[0]
            i += found[1]


def expand_flagfiles(argv, depth=0, seen=frozenset()):
    """argv with every --flagfile=FILE replaced by the flags in FILE."""
    out = []
    for kind, value in _scan(argv, "flagfile"):
        if kind == "arg":
            out.append(value)
        else:
            out.extend(_read_flagfile(value, depth, seen))
    return out


def take_log_dir(argv):
    """(argv without glog's --log_dir, the folder it names or GLOG_log_dir, else None). The last one counts."""
    out, log_dir = [], os.environ.get("GLOG_log_dir") or None
    for kind, value in _scan(argv, "log_dir"):
        if kind == "arg":
            out.append(value)
        else:
            log_dir = value
    return out, log_dir
