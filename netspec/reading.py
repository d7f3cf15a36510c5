"""Reading the user's files: regular files only, and never more than a bound.

A FIFO given as a model blocks forever in open(); /dev/zero as a weights file
reads until memory runs out. Every path netspec reads goes through
`open_regular` (or `check_regular` where a library opens it), which opens
without blocking, looks at what it got, and refuses anything but a regular
file with one line; `read_bytes` then reads at most a size limit.

`/dev/stdin` is allowed, deliberately, as a net or solver text (`netspec time
--model=/dev/stdin < net.prototxt`), read up to the text limit like any file.
"""
import fcntl
import os
import stat

from .errors import NetspecError

# A 2 GiB protobuf is the most protobuf itself will parse; text nets beyond 1 GiB are not nets.
MAX_BINARY_BYTES = 2 ** 31 - 1
MAX_TEXT_BYTES = int(os.environ.get("NETSPEC_MAX_TEXT_BYTES", 1 << 30))
STDIN = "/dev/stdin"

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _kind(mode):
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def _refusal(path, mode, what):
    if stat.S_ISDIR(mode):
        return NetspecError(f"{path}: is a directory, expected {what}")
    return NetspecError(f"{path}: is {_kind(mode)}, not a regular file; netspec reads {what} only from "
                        "regular files")


def _missing(path, what, error):
    if isinstance(error, FileNotFoundError):
        return NetspecError(f"{path}: no such file")
    if isinstance(error, PermissionError):
        return NetspecError(f"{path}: permission denied (reading {what})")
    return NetspecError(f"{path}: cannot read {what} ({error.strerror or error})")


def check_regular(path, what="a file"):
    """Refuse (NetspecError) a path that is missing or not a regular file, without opening it."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise _missing(path, what, e) from None
    if not stat.S_ISREG(st.st_mode):
        raise _refusal(path, st.st_mode, what)
    return st


def refuse_special(path, what="a file"):
    """Refuse a path that exists but is not a regular file (a FIFO or device would block or never
    end); a missing path is left to the caller's own message."""
    if os.path.exists(path) and not os.path.isfile(path):
        check_regular(path, what)


def open_regular(path, what="a file", allow_stdin=False):
    """A binary file object on `path`, which must be a regular file (or /dev/stdin when allowed).

    Opened with O_NONBLOCK, so a FIFO cannot block the open itself; the kind of
    file is then checked on the open descriptor (no race with a rename).
    """
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise _missing(path, what, e) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode) and not (allow_stdin and path == STDIN and not stat.S_ISDIR(mode)):
            raise _refusal(path, mode, what)
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path, what="a file", limit=MAX_BINARY_BYTES, allow_stdin=False):
    """All bytes of a regular file (or of /dev/stdin when allowed), refusing more than `limit`."""
    path = os.fspath(path)
    with open_regular(path, what, allow_stdin) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise too_large(path, size, limit, what)
        chunks, total = [], 0
        try:
            # The size the file has now, then whatever it grew by (or a pipe's stream) in steps,
            # never a buffer of `limit` bytes up front.
            request = size + 1
            while True:
                chunk = f.read(min(request, limit + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
                if total > limit:
                    raise too_large(path, total, limit, what, at_least=True)
                request = 1 << 20
        except OSError as e:
            raise _missing(path, what, e) from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def too_large(path, size, limit, what, at_least=False):
    return NetspecError(f"{path}: {'over ' if at_least else ''}{size} bytes, more than netspec reads for "
                        f"{what} ({limit} bytes)")
