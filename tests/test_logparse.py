"""Training-log parser: rows, columns and Seconds as Caffe's parse_log.py gives them."""
import datetime
import json
import math
import os
import re
import subprocess
import sys
from collections import OrderedDict

import pytest
from click.testing import CliRunner

from netspec.errors import NetspecError
from netspec.commands.logs import parse_log_command
from netspec.logparse import parse_log, write_csv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def glog(when, message, source="solver.cpp:239", year_prefix=False, level="I"):
    day = f"{when:%Y%m%d}" if year_prefix else f"{when:%m%d}"
    return f"{level}{day} {when:%H:%M:%S}.{when.microsecond:06d} 12345 {source}] {message}"


class LogWriter:
    """Builds a Caffe-format log line by line, the clock moving `step` seconds per line."""

    def __init__(self, start, step=0.25, year_prefix=False):
        self.now, self.step, self.year_prefix, self.lines = start, step, year_prefix, []

    def add(self, message, source="solver.cpp:239"):
        self.lines.append(glog(self.now, message, source, self.year_prefix))
        self.now += datetime.timedelta(seconds=self.step)

    def raw(self, text):
        self.lines.append(text)

    def header(self):
        self.add("Initializing solver from parameters: ", "caffe.cpp:217")
        self.raw("base_lr: 0.01")  # glog continues multi-line messages without a prefix
        self.raw('net: "lenet.prototxt"')
        self.add("Solving LeNet", "solver.cpp:289")
        self.add("Learning Rate Policy: inv", "solver.cpp:290")

    def test(self, it, net=0, names=("accuracy", "loss")):
        self.add(f"Iteration {it}, Testing net (#{net})", "solver.cpp:347")
        for k, name in enumerate(names):
            value = accuracy(it, net) if name == "accuracy" else loss(it) + net
            tail = "" if name == "accuracy" else f" (* 1 = {value} loss)"
            self.add(f"    Test net output #{k}: {name} = {value}{tail}", "solver.cpp:414")

    def train(self, it):
        self.add(f"Iteration {it} (12.3 iter/s, 8.1s/100 iters), loss = {loss(it)}")
        self.add(f"    Train net output #0: loss = {loss(it)} (* 1 = {loss(it)} loss)", "solver.cpp:258")
        self.add(f"Iteration {it}, lr = {lr(it):g}", "sgd_solver.cpp:112")


def loss(it):
    return round(2.3 / (1 + it / 50), 6)


def accuracy(it, net=0):
    return round(0.1 + 0.8 * it / (it + 100) - 0.01 * net, 6)


def lr(it):
    return 0.01 * (1 + 0.0001 * it) ** -0.75


def small_log():
    w = LogWriter(datetime.datetime(2025, 11, 22, 4, 45, 0))
    w.header()                               # Solving at +0.25 s
    for it in (0, 100, 200):
        w.test(it)
        w.train(it)
    return w.lines


def test_rows_columns_and_seconds():
    train, test = parse_log(small_log())
    # lines: init 0.0, Solving 0.25, policy 0.5; each iteration is 6 lines of 0.25 s
    assert [list(r) for r in train] == [["NumIters", "Seconds", "LearningRate", "loss"]] * 3
    assert [list(r) for r in test] == [["NumIters", "Seconds", "LearningRate", "accuracy", "loss"]] * 3
    assert [r["NumIters"] for r in train] == [0.0, 100.0, 200.0]
    assert [r["Seconds"] for r in test] == [0.75, 2.25, 3.75]   # "Test net output #0" line
    assert [r["Seconds"] for r in train] == [1.5, 3.0, 4.5]     # "Train net output #0" line
    assert [r["loss"] for r in train] == [loss(0), loss(100), loss(200)]
    assert [(r["accuracy"], r["loss"]) for r in test] == [(accuracy(i), loss(i)) for i in (0, 100, 200)]
    # Caffe's lag: a row takes the last lr printed before it; the leading NaN is filled from row 2
    assert [r["LearningRate"] for r in train] == [float(f"{lr(0):g}"), float(f"{lr(0):g}"),
                                                  float(f"{lr(100):g}")]
    assert [r["LearningRate"] for r in test] == [float(f"{lr(0):g}"), float(f"{lr(0):g}"),
                                                 float(f"{lr(100):g}")]


def test_csv_header_and_number_format_match_caffe(tmp_path):
    train, test = parse_log(small_log())
    write_csv(train, tmp_path / "a.train")
    write_csv(test, tmp_path / "a.test", delimiter="\t")
    train_bytes = (tmp_path / "a.train").read_bytes()
    assert train_bytes.startswith(b"NumIters,Seconds,LearningRate,loss\r\n0.0,1.5,0.01,2.3\r\n")
    assert train_bytes.count(b"\r\n") == 4
    assert (tmp_path / "a.test").read_bytes().split(b"\r\n")[0] == \
        b"NumIters\tSeconds\tLearningRate\taccuracy\tloss"


def test_year_boundary_keeps_seconds_increasing():
    w = LogWriter(datetime.datetime(2025, 12, 31, 23, 59, 59), step=0.5)
    w.header()
    for it in range(0, 400, 100):
        w.train(it)
    assert any(line.startswith("I0101") for line in w.lines)
    train, _ = parse_log(w.lines)
    seconds = [r["Seconds"] for r in train]
    # Solving at +0.5 s; the first output line at +2.0 s; 3 lines of 0.5 s per iteration
    assert seconds == [1.5 + 1.5 * k for k in range(4)]


def test_year_prefixed_glog_and_leap_day():
    w = LogWriter(datetime.datetime(2024, 2, 28, 23, 59, 59), step=0.5, year_prefix=True)
    w.header()
    w.train(0)
    w.now = datetime.datetime(2024, 3, 1, 0, 0, 0)   # skips the whole of Feb 29
    w.train(100)
    assert w.lines[0].startswith("I20240228 23:59:59.000000 12345 caffe.cpp:217] ")
    train, _ = parse_log(w.lines)
    # Solving at 23:59:59.5 on Feb 28; second output at 00:00:00.5 on Mar 1, a leap day later
    assert [r["Seconds"] for r in train] == [1.5, 86400.0 + 1.0]


def test_missing_year_comes_from_the_file_mtime(tmp_path):
    lines = [glog(datetime.datetime(2023, 12, 31, 23, 0), "Solving LeNet"),
             glog(datetime.datetime(2024, 1, 1, 1, 0), "Iteration 0, loss = 1"),
             glog(datetime.datetime(2024, 2, 29, 0, 0), "    Train net output #0: loss = 1"),
             glog(datetime.datetime(2024, 3, 1, 0, 0), "Iteration 10, loss = 0.5"),
             glog(datetime.datetime(2024, 3, 1, 0, 0), "    Train net output #0: loss = 0.5")]
    path = tmp_path / "run.log"
    path.write_text("\n".join(lines) + "\n")
    os.utime(path, (datetime.datetime(2024, 3, 2).timestamp(),) * 2)
    parsed = parse_log(str(path))
    assert parsed.garbled_lines == 0
    assert [r["Seconds"] for r in parsed.train] == [(59 * 24 + 1) * 3600.0, (60 * 24 + 1) * 3600.0]
    # with the wrong year Feb 29 does not exist: that line is garbled, not fatal
    os.utime(path, (datetime.datetime(2025, 3, 2).timestamp(),) * 2)
    parsed = parse_log(str(path))
    assert parsed.garbled_line_numbers == [3] and len(parsed.train) == 1
    assert parse_log(lines, year=2023).garbled_lines == 0


def test_restart_keeps_log_order_and_the_first_origin():
    w = LogWriter(datetime.datetime(2025, 5, 1, 10, 0, 0))
    w.header()
    for it in (0, 100, 200):
        w.train(it)
    w.now += datetime.timedelta(seconds=60)
    w.header()                                   # resumed from the iteration-100 snapshot
    w.add("Restoring previous solver status from lenet_iter_100.solverstate", "solver.cpp:475")
    for it in (100, 200, 300):
        w.train(it)
    parsed = parse_log(w.lines)
    assert [r["NumIters"] for r in parsed.train] == [0.0, 100.0, 200.0, 100.0, 200.0, 300.0]
    seconds = [r["Seconds"] for r in parsed.train]
    assert seconds[:3] == [0.75, 1.5, 2.25]
    # first run ends at 3.0 s, 60 s pause, 4 restart lines, then the output line; origin 0.25 s
    assert seconds[3] == 3.0 + 60 + 4 * 0.25 + 0.25 - 0.25
    assert seconds == sorted(seconds)
    assert parsed.restarts == 1


def test_restart_at_the_iteration_of_a_cut_row():
    w = LogWriter(datetime.datetime(2025, 5, 1, 10, 0, 0))
    w.header()
    w.test(0)
    w.test(100, names=("accuracy",))            # killed mid-test
    w.header()
    w.test(100)                                 # resumed: the same iteration tested again
    _, test = parse_log(w.lines)
    assert [(r["NumIters"], list(r)[3:]) for r in test] == \
        [(0.0, ["accuracy", "loss"]), (100.0, ["accuracy"]), (100.0, ["accuracy", "loss"])]


def test_two_test_nets(tmp_path):
    w = LogWriter(datetime.datetime(2025, 5, 1, 10, 0, 0))
    w.header()
    for it in (0, 100):
        w.test(it, net=0)
        w.test(it, net=1, names=("accuracy", "loss", "top5"))
        w.train(it)
    parsed = parse_log(w.lines)
    assert [(r["NumIters"], r["accuracy"], r["loss"]) for r in parsed.test] == \
        [(0.0, accuracy(0), loss(0)), (100.0, accuracy(100), loss(100))]
    assert parsed.test_nets[0] is parsed.test
    net1 = parsed.test_nets[1]
    assert [list(r)[3:] for r in net1] == [["accuracy", "loss", "top5"]] * 2
    assert [r["accuracy"] for r in net1] == [accuracy(0, 1), accuracy(100, 1)]
    log = tmp_path / "two.log"
    log.write_text("\n".join(w.lines) + "\n")
    result = CliRunner().invoke(parse_log_command, [str(log)])
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path)) == ["two.log", "two.log.test", "two.log.test1", "two.log.train"]
    assert (tmp_path / "two.log.test1").read_text().splitlines()[0] == \
        "NumIters,Seconds,LearningRate,accuracy,loss,top5"


def test_garbled_and_interleaved_lines_are_counted_not_fatal():
    clean = small_log()
    dirty = list(clean)
    when = datetime.datetime(2025, 11, 22, 4, 45, 1)
    # a line cut by another writer, and the rest of it on its own line
    dirty.insert(9, glog(when, "Iteration 9") + glog(when, "    Train net output #0: loss = 0.3"))
    dirty.insert(10, " (* 1 = 0.3 loss)")
    dirty.insert(11, glog(when, "    Train net output #0: loss = 0.3x"))   # unreadable number
    dirty.insert(12, "I1341 04:45:01.000000 12345 solver.cpp:239] Iteration 5, loss = 1")  # month 13
    dirty.insert(13, glog(when, "Iteration 100, lr = zero", "sgd_solver.cpp:112"))
    dirty.append("")
    clean_parsed, dirty_parsed = parse_log(clean), parse_log(dirty)
    assert dirty_parsed.garbled_line_numbers == [10, 12, 13, 14]
    assert dirty_parsed.skipped_lines == clean_parsed.skipped_lines + 1 == 3
    assert tuple(dirty_parsed) == tuple(clean_parsed)


def test_last_partial_row_kept_and_lone_row_kept():
    w = LogWriter(datetime.datetime(2025, 5, 1, 10, 0, 0))
    w.header()
    w.test(0)
    w.test(100, names=("accuracy",))            # killed before the loss line
    _, test = parse_log(w.lines)
    assert [list(r)[3:] for r in test] == [["accuracy", "loss"], ["accuracy"]]
    assert math.isnan(test[0]["LearningRate"])  # no lr printed at all


@pytest.mark.parametrize("lines, message", [
    ([], "the log is empty"),
    (["", "   "], "the log is empty"),
    (["hello", "world"], "no glog lines"),
    ([glog(datetime.datetime(2025, 1, 1), "Solving LeNet")], "no 'Iteration N' lines"),
    ([glog(datetime.datetime(2025, 1, 1), "Iteration 0, lr = 0.1")], "no 'Train net output'"),
])
def test_logs_without_iterations_are_errors(lines, message):
    with pytest.raises(NetspecError, match=message):
        parse_log(lines)


def test_cli_errors_are_one_line(tmp_path):
    empty = tmp_path / "empty.log"
    empty.write_text("")
    for args in ([str(empty)], [str(tmp_path / "missing.log")],
                 [str(empty), "--delimiter", ";;"]):
        result = CliRunner().invoke(parse_log_command, args)
        assert result.exit_code == 1
        assert result.stderr.startswith("netspec: error: ") and result.stderr.count("\n") == 1
    assert "the log is empty" in CliRunner().invoke(parse_log_command, [str(empty)]).stderr


def test_cli_json_and_script(tmp_path):
    log = tmp_path / "run.log"
    log.write_text("\n".join(small_log()) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    result = CliRunner().invoke(parse_log_command, [str(log), str(out), "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "run.log.train.json").read_text())
    assert rows[1] == {"NumIters": 100.0, "Seconds": 3.0, "LearningRate": 0.01, "loss": loss(100)}
    assert len(json.loads((out / "run.log.test.json").read_text())) == 3
    done = subprocess.run([sys.executable, os.path.join(REPO, "tools", "parse_log.py"), str(log),
                           str(out), "--delimiter", "tab"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (out / "run.log.test").read_text().splitlines()[0] == \
        "NumIters\tSeconds\tLearningRate\taccuracy\tloss"


# Caffe's parse_log.py, restated from its documented regular expressions and rules
CAFFE_ITERATION = re.compile(r"Iteration (\d+)")
CAFFE_TRAIN = re.compile(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)")
CAFFE_TEST = re.compile(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)")
CAFFE_LR = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")


def caffe_time(line, year):
    fields = line.strip().split()
    clock, micros = fields[1].rsplit(".", 1)
    h, m, s = (int(x) for x in clock.split(":"))
    return datetime.datetime(year, int(fields[0][1:3]), int(fields[0][3:]), h, m, s, int(micros))


def caffe_reference(lines, year):
    lines = iter(lines)
    start = next(caffe_time(line, year) for line in lines if "Solving" in line)
    last, iteration, rate = start, -1, float("nan")
    tables = {CAFFE_TRAIN: ([], [None]), CAFFE_TEST: ([], [None])}
    for line in lines:
        found = CAFFE_ITERATION.search(line)
        if found:
            iteration = float(found.group(1))
        if iteration == -1:
            continue
        try:
            when = caffe_time(line, year)
        except (ValueError, IndexError):
            continue
        if when.month < last.month:
            year += 1
            when = caffe_time(line, year)
        last = when
        found = CAFFE_LR.search(line)
        if found:
            rate = float(found.group(1))
        for regex, (rows, pending) in tables.items():
            found = regex.search(line)
            if found:
                if pending[0] is None or pending[0]["NumIters"] != iteration:
                    if pending[0] is not None:
                        rows.append(pending[0])
                    pending[0] = OrderedDict([("NumIters", iteration),
                                              ("Seconds", (when - start).total_seconds()),
                                              ("LearningRate", rate)])
                pending[0][found.group(2)] = float(found.group(3))
            if pending[0] is not None and rows and len(pending[0]) == len(rows[0]):
                rows.append(pending[0])
                pending[0] = None
    for rows, _ in tables.values():
        if len(rows) > 1:
            rows[0]["LearningRate"] = rows[1]["LearningRate"]
    return tables[CAFFE_TRAIN][0], tables[CAFFE_TEST][0]


def test_same_rows_as_caffe_parse_log():
    w = LogWriter(datetime.datetime(2025, 12, 31, 23, 58, 0), step=1.75)
    w.header()
    for it in range(0, 1001, 50):
        if it % 200 == 0:
            w.test(it)
        w.train(it)
        if it == 500:
            w.add("Snapshotting to binary proto file lenet_iter_500.caffemodel", "solver.cpp:464")
    w.add("Iteration 1000, loss = 0.1", "solver.cpp:448")
    w.add("Optimization Done.", "solver.cpp:453")
    ours = parse_log(w.lines, year=2025)
    theirs = caffe_reference(w.lines, 2025)
    assert len(ours.train) == 21 and len(ours.test) == 6
    assert list(ours) == list(theirs)
    assert ours.train[-1]["Seconds"] > 120   # crossed midnight into the new year
