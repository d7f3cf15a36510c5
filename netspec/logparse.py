"""Turn a Caffe/netspec training log into the tables Caffe's parse_log.py writes.

Output matches BVLC/caffe tools/extra/parse_log.py: `<log>.train` and
`<log>.test`, CSV in the excel dialect (so CRLF line ends, as Caffe's files
have), header `NumIters,Seconds,LearningRate` then one column per net output
named as the log names it, in the order the log first prints them. Numbers are
Python floats written with repr, NumIters included ("100.0"), as Caffe does.

Rows follow Caffe's rules:
  * nothing counts before the first "Iteration N" line;
  * each "Train/Test net output #k: name = v" line adds a column to the current
    row of its table; a new row starts when the iteration changes, and a row
    is done once it has as many columns as the table's first row;
  * Seconds is the time of the row's first output line minus the time of the
    first "Solving ..." line (the first glog line if there is none);
  * LearningRate is the last "lr = x" seen when the row started, so it lags one
    display interval as in Caffe; a leading NaN is filled from the second row.

Deliberate differences, for robustness:
  * Several test nets: Caffe pours every net's outputs into one row. Here
    "Testing net (#k)" picks the table: `.test` holds net #0 (the usual single
    test net) and net #k>0 goes to ParsedLog.test_nets[k], written as
    `<log>.test<k>`.
  * A resumed run (iterations going back) just continues in log order; the
    clock stays on the first run's origin. The last, possibly partial, row is
    kept (Caffe drops a table's only row) and a column missing from a row is
    left empty.
  * glog omits the year (`I1231 ...`): a month jumping back by half a year or
    more means a new year, so Dec 31 -> Jan 1 keeps Seconds increasing. A year
    prefix (`I20261122 ...`) is used as given. Without one the year of the
    first line is `year=`, else the log file's mtime year minus the number of
    new years seen (it only matters for Feb 29).
  * Lines without a glog prefix (prototxt dumps, stray prints) are skipped and
    counted; glog lines with an impossible date, a second glog prefix inside
    (interleaved writers) or an unreadable number are counted as garbled.
"""
import csv
import datetime
import json
import math
import os
import re
import time
from collections import OrderedDict

from .durable import open_for_write
from .errors import NetspecError
from .reading import read_bytes

BASE_COLUMNS = ("NumIters", "Seconds", "LearningRate")

# level, [yyyy]mmdd, hh:mm:ss.micros, thread id, file:line] message
_GLOG = re.compile(r"([IWEF])(\d{8}|\d{4}) (\d\d):(\d\d):(\d\d)\.(\d{1,6})\s+\d+\s+[^\s\]]+\]\s?(.*)")
_GLOG_INSIDE = re.compile(r"[IWEF]\d{4}(?:\d{4})? \d\d:\d\d:\d\d\.\d{6} ")
_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?i:nan|inf))"
_ITERATION = re.compile(r"\bIteration (\d+)")
_TESTING = re.compile(r"Testing net \(#(\d+)\)")
_OUTPUT = re.compile(r"(Train|Test) net output #\d+: (\S+) = " + _NUMBER + r"(?=\s|$)")
_LR = re.compile(r"\blr = " + _NUMBER + r"(?=[\s,]|$)")


class ParsedLog(tuple):
    """Unpacks as (train_rows, test_rows); also carries what else was seen.

    test_nets maps every test net index to its rows (0 is the same list as
    test_rows); skipped_lines counts non-glog lines, garbled_lines the glog
    lines that could not be read (their numbers in garbled_line_numbers);
    restarts counts the times the iteration number went back.
    """

    def __new__(cls, train, test, test_nets, skipped_lines=0, garbled_line_numbers=(), restarts=0,
                source="<lines>"):
        self = super().__new__(cls, (train, test))
        self.test_nets = test_nets
        self.skipped_lines = skipped_lines
        self.garbled_line_numbers = list(garbled_line_numbers)
        self.garbled_lines = len(self.garbled_line_numbers)
        self.restarts = restarts
        self.source = source
        return self

    @property
    def train(self):
        return self[0]

    @property
    def test(self):
        return self[1]


class _Clock:
    """glog timestamps -> datetimes, supplying the year glog leaves out."""

    def __init__(self, year):
        self.year, self.last_month = year, None

    def stamp(self, m):
        ymd, hours, minutes, seconds, fraction = m.group(2, 3, 4, 5, 6)
        if len(ymd) == 8:
            year, month, day = int(ymd[:4]), int(ymd[4:6]), int(ymd[6:])
        else:
            month, day = int(ymd[:2]), int(ymd[2:])
            # interleaved writers can step back a little; only a big jump is a new year
            year = self.year + (self.last_month is not None and self.last_month - month >= 6)
        when = datetime.datetime(year, month, day, int(hours), int(minutes), int(seconds),
                                 int(fraction.ljust(6, "0")))  # ValueError for an impossible date
        self.year, self.last_month = year, month
        return when


class _Table:
    """Rows of one table (train, or one test net), paired the way Caffe pairs them."""

    def __init__(self):
        self.rows, self.pending, self.width = [], None, None

    def add(self, iteration, seconds, lr, name, value):
        row = self.pending
        if row is not None and (row["NumIters"] != iteration or name in row):
            self.flush()
            row = None
        if row is None:
            row = self.pending = OrderedDict(
                [("NumIters", float(iteration)), ("Seconds", seconds), ("LearningRate", lr)])
        row[name] = value
        if self.width is not None and len(row) >= self.width:
            self.flush()

    def flush(self):
        if self.pending is not None:
            self.rows.append(self.pending)
            self.width = self.width or len(self.pending)
            self.pending = None


def _read_lines(source):
    if isinstance(source, (str, bytes, os.PathLike)):
        path = os.fsdecode(source)
        text = read_bytes(path, "a training log").decode("utf-8", errors="replace")
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")   # universal newlines, as open()
        if lines and not lines[-1]:
            lines.pop()
        return path, lines, time.localtime(os.path.getmtime(path)).tm_year
    return "<lines>", [line.rstrip("\r\n") for line in source], time.localtime().tm_year


def _first_year(lines, last_year):
    """Year of the first line, given the year of the last one: count the new years in between."""
    new_years, last_month = 0, None
    for line in lines:
        # a cheap look at "Immdd " (the full parse comes later); only the month matters here
        if line[:1] in ("I", "W", "E", "F") and line[1:5].isdigit() and line[5:6] == " ":
            month = int(line[1:3])
            if 1 <= month <= 12:
                new_years += last_month is not None and last_month - month >= 6
                last_month = month
    return last_year - new_years


def parse_log(source, year=None):
    """Parse a log file path (or an iterable of lines) into a ParsedLog."""
    name, lines, last_year = _read_lines(source)
    clock = _Clock(year if year is not None else _first_year(lines, last_year))
    tables = {}  # "train" or the test net index -> _Table
    iteration, lr, test_net = None, float("nan"), 0
    origin, origin_is_solving, glog_lines, skipped, garbled, restarts = None, False, 0, 0, [], 0
    for lineno, line in enumerate(lines, 1):
        m = _GLOG.match(line)
        if not m:
            skipped += bool(line.strip())
            continue
        message = m.group(7)
        try:
            when = clock.stamp(m)
        except ValueError:
            garbled.append(lineno)
            continue
        # read everything first, so that a garbled line changes no state
        rate = _LR.search(message) if "lr = " in message else None
        output = _OUTPUT.search(message) if "net output #" in message else None
        if (_GLOG_INSIDE.search(message) or ("lr = " in message and not rate)
                or ("net output #" in message and not output)):
            garbled.append(lineno)
            continue
        glog_lines += 1
        if origin is None or (iteration is None and not origin_is_solving
                              and message.startswith("Solving")):
            origin, origin_is_solving = when, message.startswith("Solving")
        it = _ITERATION.search(message)
        if it:
            if iteration is not None and int(it.group(1)) < iteration:
                restarts += 1
            iteration = int(it.group(1))
        testing = _TESTING.search(message)
        if testing:
            test_net = int(testing.group(1))
        if iteration is None:
            continue
        if rate:
            lr = float(rate.group(1))
        if output:
            key = "train" if output.group(1) == "Train" else test_net
            tables.setdefault(key, _Table()).add(iteration, (when - origin).total_seconds(), lr,
                                                 output.group(2), float(output.group(3)))
    if not any(line.strip() for line in lines):
        raise NetspecError(f"{name}: the log is empty")
    if not glog_lines:
        raise NetspecError(f"{name}: no glog lines (like 'I1122 04:45:01.648386 1234 solver.cpp:239] ...'); "
                           "is this a Caffe or netspec training log?")
    if iteration is None:
        raise NetspecError(f"{name}: no 'Iteration N' lines; the log has no training iterations")
    if not tables:
        raise NetspecError(f"{name}: has iterations but no 'Train net output' or 'Test net output' lines")
    for table in tables.values():
        table.flush()
        rows = table.rows
        if len(rows) > 1 and math.isnan(rows[0]["LearningRate"]):
            rows[0]["LearningRate"] = rows[1]["LearningRate"]
    train = tables["train"].rows if "train" in tables else []
    test_nets = {k: t.rows for k, t in sorted((k, t) for k, t in tables.items() if k != "train")}
    return ParsedLog(train, test_nets.get(0, []), test_nets, skipped, garbled, restarts, name)


def columns(rows):
    """Caffe's three columns, then every output name in order of first appearance."""
    names = list(BASE_COLUMNS)
    for row in rows:
        names.extend(k for k in row if k not in names)
    return names


def write_csv(rows, path, delimiter=","):
    """Write rows as Caffe's parse_log.py does; with no rows, just the header."""
    if len(delimiter) != 1:
        raise NetspecError(f"--delimiter must be one character, got {delimiter!r}")
    names = columns(rows)
    with open_for_write(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter)  # excel dialect: CRLF, like Caffe's files
        writer.writerow(names)
        writer.writerows([row.get(c) for c in names] for row in rows)


def write_json(rows, path):
    """Rows as a JSON list of objects; NaN becomes null so the file is strict JSON."""
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
             for row in rows]
    with open_for_write(path, "w") as f:
        json.dump(clean, f, indent=1, allow_nan=False)
        f.write("\n")


def save_tables(parsed, logfile, output_dir=None, fmt="csv", delimiter=","):
    """Write <log>.train, <log>.test and <log>.test<k> (plus .json for json); return the paths."""
    output_dir = output_dir if output_dir is not None else (os.path.dirname(logfile) or ".")
    if not os.path.isdir(output_dir):
        raise NetspecError(f"{output_dir}: output directory does not exist")
    base = os.path.join(output_dir, os.path.basename(logfile))
    outputs = [(".train", parsed.train), (".test", parsed.test)]
    outputs += [(f".test{k}", rows) for k, rows in parsed.test_nets.items() if k != 0]
    written = []
    for suffix, rows in outputs:
        path = base + suffix + (".json" if fmt == "json" else "")
        try:
            write_json(rows, path) if fmt == "json" else write_csv(rows, path, delimiter)
        except OSError as e:
            raise NetspecError(f"{path}: cannot write: {e.strerror or e}") from None
        written.append(path)
    return written
