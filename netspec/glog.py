"""Log lines in glog's format, the format Caffe writes and its log parsers read.

    I1122 04:45:01.648386 12345 solver.cpp:239] Iteration 100, loss = 0.3

Caffe's tools/extra/parse_log.py keys on the message text, so netspec writes
the same messages with the same prefix. The source-file field names the Caffe
file that writes the same line, which keeps greps written for Caffe working.
"""
import logging
import os
import sys
import time

_LEVEL_LETTER = {logging.DEBUG: "I", logging.INFO: "I", logging.WARNING: "W",
                 logging.ERROR: "E", logging.CRITICAL: "F"}


# Every control character but the tab (Caffe's `time` lines use tabs).
_CONTROL = {c: f"\\x{c:02x}" for c in list(range(0x20)) + [0x7f] if c != 0x09}
_CONTROL.update({ord("\n"): "\\n", ord("\r"): "\\r"})


def printable(text):
    """`text` with control characters escaped (a newline in a layer name must not forge a log line)."""
    return str(text).translate(_CONTROL)


class GlogFormatter(logging.Formatter):
    def format(self, record):
        t = time.localtime(record.created)
        micros = int((record.created - int(record.created)) * 1e6)
        source = getattr(record, "source", "netspec.py:0")
        prefix = (f"{_LEVEL_LETTER.get(record.levelno, 'I')}{t.tm_mon:02d}{t.tm_mday:02d} "
                  f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{micros:06d} "
                  f"{os.getpid()} {source}] ")
        return prefix + printable(record.getMessage())


class _Handler(logging.StreamHandler):
    """A stream handler that first clears a progress line, if one is showing."""

    def emit(self, record):
        _clear_progress()
        super().emit(record)


logger = logging.getLogger("netspec")
logger.propagate = False
_progress = {"stream": None, "shown": False, "last": 0.0}


def configure(stream=None, level=logging.INFO):
    """Send glog-formatted lines to `stream` (stderr by default, as glog does).

    A progress line is shown only when that stream is an interactive terminal,
    never in a log written to a file or a pipe.
    """
    for h in list(logger.handlers):
        logger.removeHandler(h)
    stream = stream or sys.stderr
    handler = _Handler(stream)
    handler.setFormatter(GlogFormatter())
    logger.addHandler(handler)
    logger.setLevel(level)
    interactive = hasattr(stream, "isatty") and stream.isatty() and os.environ.get("TERM") != "dumb"
    _progress.update(stream=stream if interactive else None, shown=False)


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


def info(message, source="netspec.py:0"):
    logger.info(message, extra={"source": source})


def warning(message, source="netspec.py:0"):
    logger.warning(message, extra={"source": source})


def error(message, source="netspec.py:0"):
    logger.error(message, extra={"source": source})
