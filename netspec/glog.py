"""Log lines in glog's format, the format Caffe writes and its log parsers read.

    I1122 04:45:01.648386 12345 solver.cpp:239] Iteration 100, loss = 0.3

Caffe's tools/extra/parse_log.py keys on the message text, so netspec writes
the same messages with the same prefix. The source-file field names the Caffe
file that writes the same line, which keeps greps written for Caffe working.
"""
import atexit
import logging
import os
import sys
import threading
import time

_LEVEL_LETTER = {logging.DEBUG: "I", logging.INFO: "I", logging.WARNING: "W",
                 logging.ERROR: "E", logging.CRITICAL: "F"}


# Every control character but the tab (Caffe's `time` lines use tabs).
_CONTROL = {c: f"\\x{c:02x}" for c in list(range(0x20)) + [0x7f] if c != 0x09}
_CONTROL.update({ord("\n"): "\\n", ord("\r"): "\\r"})


def printable(text):
    """`text` with control characters escaped (a newline in a layer name must not forge a log line)."""
    return str(text).translate(_CONTROL)


_second = (None, "")              # the last second formatted, "mmdd hh:mm:ss": lines come in bursts


def _line(letter, created, source, message):
    """One glog line (no newline): `I1122 04:45:01.648386 12345 solver.cpp:239] message`."""
    global _second
    whole = int(created)
    second, stamp = _second           # one read: another thread may replace it meanwhile
    if second != whole:
        t = time.localtime(created)
        stamp = f"{t.tm_mon:02d}{t.tm_mday:02d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
        _second = (whole, stamp)
    micros = int((created - whole) * 1e6)
    return f"{letter}{stamp}.{micros:06d} {os.getpid()} {source}] {printable(message)}"


class GlogFormatter(logging.Formatter):
    def format(self, record):
        return _line(_LEVEL_LETTER.get(record.levelno, "I"), record.created,
                     getattr(record, "source", "netspec.py:0"), record.getMessage())


class _Handler(logging.StreamHandler):
    """A stream handler that first clears a progress line, if one is showing."""

    def emit(self, record):
        _clear_progress()
        super().emit(record)

    def write_lines(self, text):
        """Formatted lines, written and flushed at once (what emit does for each, minus its cost)."""
        with self.lock:
            _clear_progress()
            stream = self.stream
            stream.write(text)
            stream.flush()


class _StderrHandler(_Handler):
    """Writes to whatever sys.stderr is when a line is logged (pytest, notebooks and
    contextlib.redirect_stderr replace it), as glog writes to the process's stderr."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


logger = logging.getLogger("netspec")
logger.propagate = False
_progress = {"stream": None, "shown": False, "last": 0.0}

# glog's severities as GLOG_minloglevel numbers them.
_GLOG_LEVELS = (logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)


def level_from_glog(number):
    """logging's level for glog's minloglevel 0..3 (INFO, WARNING, ERROR, FATAL)."""
    return _GLOG_LEVELS[min(max(int(number), 0), len(_GLOG_LEVELS) - 1)]


def default_level():
    """INFO, or what GLOG_minloglevel asks for (Caffe's and pycaffe's way to quiet the log)."""
    try:
        return level_from_glog(os.environ.get("GLOG_minloglevel", "0"))
    except ValueError:
        return logging.INFO


def ensure_configured():
    """pycaffe logs from the start, to stderr: do so unless something configured the log already."""
    if not logger.handlers:
        configure(level=default_level())


def configure(stream=None, level=logging.INFO):
    """Send glog-formatted lines to `stream` (stderr by default, as glog does).

    A progress line is shown only when that stream is an interactive terminal,
    never in a log written to a file or a pipe.
    """
    for h in list(logger.handlers):
        logger.removeHandler(h)
    handler = _Handler(stream) if stream is not None else _StderrHandler()
    stream = stream or sys.stderr
    handler.setFormatter(GlogFormatter())
    logger.addHandler(handler)
    logger.setLevel(level)
    interactive = hasattr(stream, "isatty") and stream.isatty() and os.environ.get("TERM") != "dumb"
    _progress.update(stream=stream if interactive else None, shown=False)


_SEVERITIES = ((logging.INFO, "INFO"), (logging.WARNING, "WARNING"), (logging.ERROR, "ERROR"))


class _LogFiles(logging.Handler):
    """glog's log files: <dir>/<program>.<host>.<user>.log.<SEVERITY>.<yyyymmdd-hhmmss>.<pid>, each
    with every line of its severity or above, made when the first such line comes, and a symlink
    <dir>/<program>.<SEVERITY> to the newest (what `parse_log.sh caffe.INFO` style scripts read)."""

    def __init__(self, folder, program):
        super().__init__(logging.INFO)
        self.folder, self.program = folder, program
        self.setFormatter(GlogFormatter())
        self.files = {}
        self._stamp = time.strftime("%Y%m%d-%H%M%S")

    def _open(self, severity):
        import getpass
        import socket
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "invalid-user"
        host = socket.gethostname() or "unknown"
        name = f"{self.program}.{host}.{user}.log.{severity}.{self._stamp}.{os.getpid()}"
        f = open(os.path.join(self.folder, name), "a", encoding="utf-8")
        f.write(f"Log file created at: {time.strftime('%Y/%m/%d %H:%M:%S')}\n"
                f"Running on machine: {host}\n"
                "Log line format: [IWEF]mmdd hh:mm:ss.uuuuuu threadid file:line] msg\n")
        link = os.path.join(self.folder, f"{self.program}.{severity}")
        temp = f"{link}.{os.getpid()}.tmp"
        try:                                    # replace the link in one step, as glog does
            if os.path.lexists(temp):
                os.unlink(temp)
            os.symlink(name, temp)
            os.replace(temp, link)
        except OSError:
            pass                                # no symlinks here (some filesystems): the files still hold it all
        return f

    def emit(self, record):
        try:
            self._write(self.format(record) + "\n", record.levelno)
        except Exception:  # noqa: BLE001 - logging must not end the run
            self.handleError(record)

    def _write(self, text, levelno):
        for level, severity in _SEVERITIES:
            if levelno >= level:
                if severity not in self.files:
                    self.files[severity] = self._open(severity)
                self.files[severity].write(text)
                self.files[severity].flush()

    def write_lines(self, text):
        with self.lock:
            self._write(text, logging.INFO)

    def close(self):
        for f in self.files.values():
            f.close()
        self.files = {}
        super().close()


def add_log_files(folder, program="netspec"):
    """Also write glog's log files in `folder` (netspec's --log_dir), made if missing."""
    from .errors import NetspecError
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".{program}.{os.getpid()}.probe")
        with open(probe, "w"):
            pass
        os.unlink(probe)
    except OSError as e:
        raise NetspecError(f"--log_dir={folder}: cannot write log files there ({e.strerror or e})") from None
    handler = _LogFiles(folder, program)
    logger.addHandler(handler)
    return handler


def progress(text, every=0.2):
    """Show `text` on a transient status line (interactive terminals only, at most every `every` s)."""
    stream = _progress["stream"]
    now = time.monotonic()
    if stream is None or now - _progress["last"] < every:
        return
    _progress["last"] = now
    stream.write("\r\x1b[K" + text)
    stream.flush()
    _progress["shown"] = True


def _clear_progress():
    if _progress["shown"] and _progress["stream"] is not None:
        _progress["stream"].write("\r\x1b[K")
        _progress["shown"] = False


# ------------------------------------------------------------------ deferred INFO lines
# Net setup logs ~5 lines per layer; a logging record costs ~40 us, which made a 100k-layer net
# spend most of its setup logging. Such lines are gathered and written with one call per handler.
# A filter on the logger writes them out before any other record, so the order never changes.
_pending = []
_pending_lock = threading.Lock()


def info_enabled():
    """Whether INFO lines are written at all (callers skip building them when not)."""
    return logger.isEnabledFor(logging.INFO)


def info_later(message, source="netspec.py:0"):
    """An INFO line written at the next flush(), or before any other line logged first; it is
    stamped when written (microseconds later: the callers flush at the end of a step)."""
    _pending.append((message, source))     # list.append is atomic: no lock per line


def flush():
    """Write the lines info_later() gathered: one write per handler when all are glog's own."""
    global _pending
    if not _pending:
        return
    with _pending_lock:
        lines, _pending = _pending, []
    if not logger.isEnabledFor(logging.INFO):
        return
    created = time.time()
    text = None
    for h in list(logger.handlers):
        if h.level > logging.INFO:
            continue
        if hasattr(h, "write_lines") and not h.filters:
            if text is None:
                head = _line("I", created, "", "")[:-2]          # up to the source field
                if "".join(message for message, _ in lines).isprintable():
                    text = "".join([f"{head}{source}] {message}\n" for message, source in lines])
                else:                                            # some control character to escape
                    text = "".join([f"{head}{source}] {printable(message)}\n" for message, source in lines])
            try:
                h.write_lines(text)
                continue
            except Exception:  # noqa: BLE001 - a failing stream: let logging report it, line by line
                pass
        for message, source in lines:            # someone else's handler: a record for each line
            record = logger.makeRecord(logger.name, logging.INFO, "(glog)", 0, message, None, None,
                                       extra={"source": source})
            record.created = created
            h.handle(record)


class _FlushFirst(logging.Filter):
    def filter(self, record):
        flush()
        return True


logger.addFilter(_FlushFirst())
atexit.register(flush)


def info(message, source="netspec.py:0"):
    logger.info(message, extra={"source": source})


def warning(message, source="netspec.py:0"):
    logger.warning(message, extra={"source": source})


def error(message, source="netspec.py:0"):
    logger.error(message, extra={"source": source})
