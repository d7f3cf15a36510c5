"""The one error type netspec raises for problems in the user's input.

The CLI prints a NetspecError as a single line and exits 1; anything else is a
bug in netspec and gets a traceback.
"""


class NetspecError(Exception):
    """A problem with a net, solver, weights file or dataset the user gave us."""


class ParseError(NetspecError):
    """A malformed file: the message starts with `path:line:col:`."""

    def __init__(self, path, line, col, message):
        self.path, self.line, self.col = path, line, col
        where = f"{path}:{line}:{col}" if line else str(path)
        super().__init__(f"{where}: {message}")


def install_hint(extra, package):
    """How to install an optional dependency. Never the bare name `netspec` on the package index:
    that name belongs to an unrelated project, whose code installing `netspec[...]` from the index would bring."""
    return f"pip install {package} (or, in the netspec checkout, pip install -e '.[{extra}]')"


def prefixed(error, prefix):
    """The same error, of the same class, with `prefix: ` in front of its message.

    Keeps subclasses that also derive from a builtin (a failing Python layer's
    RuntimeError) catchable as such after the net names its file in front.
    """
    cls = type(error)
    copy = cls.__new__(cls)
    copy.__dict__.update(error.__dict__)
    copy.args = (f"{prefix}: {error}",)
    return copy
