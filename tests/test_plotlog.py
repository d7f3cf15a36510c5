"""Training-log charts: Caffe's chart numbering, PNG/SVG output, matplotlib optional."""
import datetime
import os
import struct
import subprocess
import sys

import pytest
from click.testing import CliRunner

from netspec.errors import NetspecError
from netspec.commands.logs import plot_log_command
from netspec.plotlog import CHART_TYPES, build_figure, chart_name, plot_logs, resolve_chart_type

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_log(path, scale=1.0, with_tests=True):
    """A short Caffe-format log; losses scaled so two logs draw different lines."""
    now = datetime.datetime(2025, 3, 1, 12, 0, 0)
    lines = []

    def add(message, source="solver.cpp:239"):
        nonlocal now
        lines.append(f"I{now:%m%d %H:%M:%S}.{now.microsecond:06d} 4242 {source}] {message}")
        now += datetime.timedelta(seconds=0.5)

    add("Solving LeNet", "solver.cpp:289")
    for it in range(0, 401, 100):
        loss = round(scale * 2.0 / (1 + it / 100), 5)
        if with_tests:
            add(f"Iteration {it}, Testing net (#0)", "solver.cpp:347")
            add(f"    Test net output #0: accuracy = {round(0.5 + it / 1000, 3)}", "solver.cpp:414")
            add(f"    Test net output #1: loss = {loss} (* 1 = {loss} loss)", "solver.cpp:414")
        add(f"Iteration {it} (10 iter/s, 10s/100 iters), loss = {loss}")
        add(f"    Train net output #0: loss = {loss} (* 1 = {loss} loss)", "solver.cpp:258")
        add(f"Iteration {it}, lr = {0.01 * 0.9 ** (it // 100):.6g}", "sgd_solver.cpp:112")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_chart_numbers_are_caffes():
    # Caffe sorts its field names and pairs every y field with Iters, then Seconds
    fields = sorted(["Iters", "Seconds", "Train loss", "Train learning rate", "Test accuracy", "Test loss"])
    expected = [(y, x) for y in fields if y not in ("Iters", "Seconds") for x in ("Iters", "Seconds")]
    assert list(CHART_TYPES) == expected
    assert resolve_chart_type("6") == resolve_chart_type(6) == resolve_chart_type("train-loss-vs-iters") == 6
    assert resolve_chart_type("Test_accuracy_vs_Seconds") == 1
    assert chart_name(4) == "train-learning-rate-vs-iters"
    for bad in ("8", "-1", "loss"):
        with pytest.raises(NetspecError, match="unknown chart type"):
            resolve_chart_type(bad)


def test_png_from_two_logs(tmp_path):
    pytest.importorskip("matplotlib")
    logs = [write_log(tmp_path / "run_a.log"), write_log(tmp_path / "run_b.log", scale=1.5)]
    out = plot_logs(6, str(tmp_path / "loss.png"), logs)
    data = open(out, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 100 and len(data) > 1000


def test_figure_has_one_line_per_log_with_the_parsed_values(tmp_path):
    pytest.importorskip("matplotlib")
    logs = [write_log(tmp_path / "run_a.log"), write_log(tmp_path / "run_b.log", scale=1.5)]
    fig = build_figure("train-loss-vs-seconds", logs)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["run_a", "run_b"]
    assert ax.get_title() == "Train loss vs. Seconds" and ax.get_xlabel() == "Seconds"
    a, b = ax.get_lines()
    # Solving at 0 s; each iteration is six 0.5 s lines, its train output the fifth
    assert list(a.get_xdata()) == [2.5, 5.5, 8.5, 11.5, 14.5]
    assert list(b.get_ydata()) == [3.0, 1.5, 1.0, 0.75, 0.6]
    acc = build_figure(0, logs[:1]).axes[0].get_lines()[0]
    assert list(acc.get_xdata()) == [0, 100, 200, 300, 400]
    assert list(acc.get_ydata()) == [0.5, 0.6, 0.7, 0.8, 0.9]


def test_svg_through_the_cli_and_the_script(tmp_path):
    pytest.importorskip("matplotlib")
    log = write_log(tmp_path / "run.log")
    result = CliRunner().invoke(plot_log_command, ["5", str(tmp_path / "lr.svg"), log])
    assert result.exit_code == 0, result.output
    assert b"<svg" in (tmp_path / "lr.svg").read_bytes()[:400]
    done = subprocess.run([sys.executable, os.path.join(REPO, "tools", "plot_training_log.py"),
                           "test-loss-vs-iters", str(tmp_path / "t.png"), log],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_requests_are_clear_errors(tmp_path):
    pytest.importorskip("matplotlib")
    log = write_log(tmp_path / "train_only.log", with_tests=False)
    with pytest.raises(NetspecError, match=r"train_only.log: no test accuracy to plot"):
        plot_logs(0, str(tmp_path / "a.png"), [log])
    with pytest.raises(NetspecError, match=r"must end in .png or .svg"):
        plot_logs(6, str(tmp_path / "a.jpg"), [log])
    result = CliRunner().invoke(plot_log_command, ["6", str(tmp_path / "a.png"), str(tmp_path / "no.log")])
    assert result.exit_code == 1
    assert result.stderr.startswith("netspec: error: ") and result.stderr.count("\n") == 1


def test_missing_matplotlib_is_a_clear_error(tmp_path, monkeypatch):
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib...` fail
    log = write_log(tmp_path / "run.log")
    with pytest.raises(NetspecError) as err:
        plot_logs(6, str(tmp_path / "a.png"), [log])
    assert str(err.value) == ("plotting needs matplotlib: pip install matplotlib (or, in the netspec checkout, "
                              "pip install -e '.[plot]')")
    result = CliRunner().invoke(plot_log_command, ["6", str(tmp_path / "a.png"), log])
    assert result.exit_code == 1
    assert result.stderr == ("netspec: error: plotting needs matplotlib: pip install matplotlib (or, in the "
                             "netspec checkout, pip install -e '.[plot]')\n")
    assert not os.path.exists(tmp_path / "a.png")
