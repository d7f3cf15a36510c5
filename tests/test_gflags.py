"""gflags' --flagfile, glog's --log_dir files, and `netspec train --on_divergence`."""
import os
import subprocess
import sys
import textwrap

import pytest

from netspec import NetspecError
from netspec.gflags import expand_flagfiles, take_log_dir
from test_pycaffe import REGRESSION as NET      # a net that diverges at a large lr


def netspec_cli(args, cwd, env=None):
    full_env = dict(os.environ, **(env or {}))
    full_env.pop("GLOG_log_dir", None)
    full_env.pop("GLOG_minloglevel", None)
    return subprocess.run([sys.executable, "-m", "netspec", *args], cwd=cwd, capture_output=True, text=True,
                          env=full_env, timeout=300)


@pytest.fixture
def run_dir(tmp_path):
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(
        "net: 'net.prototxt' base_lr: 0.01 lr_policy: 'fixed' max_iter: 3 display: 1 "
        "snapshot_after_train: false\n")
    (tmp_path / "diverge.prototxt").write_text(
        "net: 'net.prototxt' base_lr: 1e10 lr_policy: 'fixed' max_iter: 30 display: 1 "
        "snapshot_after_train: false snapshot_prefix: 'snaps/d'\n")
    return tmp_path


# ---------------------------------------------------------------- --flagfile

def test_flagfile_expands_in_place_and_later_flags_win(tmp_path):
    inner = tmp_path / "inner.flags"
    inner.write_text("--iterations=7\n")
    outer = tmp_path / "outer.flags"
    outer.write_text(textwrap.dedent(f"""
        # a comment
        --model=a.prototxt
        // another comment

        -weights=w.caffemodel
        --flagfile={inner}
    """))
    argv = expand_flagfiles(["test", f"--flagfile={outer}", "--model=b.prototxt"])
    assert argv == ["test", "--model=a.prototxt", "-weights=w.caffemodel", "--iterations=7", "--model=b.prototxt"]
    assert expand_flagfiles(["test", "-flagfile", str(inner)]) == ["test", "--iterations=7"]


def test_flagfile_errors(tmp_path):
    bad = tmp_path / "bad.flags"
    bad.write_text("--model=x\nsolver.prototxt\n")
    with pytest.raises(NetspecError, match=r"bad.flags:2:1: expected a flag such as --solver=FILE, got 'solver"):
        expand_flagfiles([f"--flagfile={bad}"])
    loop = tmp_path / "loop.flags"
    loop.write_text(f"--flagfile={loop}\n")
    with pytest.raises(NetspecError, match="include each other in a loop"):
        expand_flagfiles([f"--flagfile={loop}"])
    with pytest.raises(NetspecError, match="missing.flags: cannot read the flagfile"):
        expand_flagfiles([f"--flagfile={tmp_path / 'missing.flags'}"])


def test_train_from_a_flagfile(run_dir):
    (run_dir / "train.flags").write_text("--solver=solver.prototxt\n")
    result = netspec_cli(["train", "--flagfile=train.flags"], run_dir)
    assert result.returncode == 0, result.stderr
    assert "Iteration 3, loss = " in result.stderr and "Optimization Done." in result.stderr
    missing = netspec_cli(["train", "--flagfile=nope.flags"], run_dir)
    assert missing.returncode == 1
    assert missing.stderr.startswith("netspec: error: nope.flags: cannot read the flagfile") and \
        missing.stderr.count("\n") == 1


# ---------------------------------------------------------------- --log_dir

def test_take_log_dir(monkeypatch):
    monkeypatch.delenv("GLOG_log_dir", raising=False)
    assert take_log_dir(["train", "--log_dir=logs", "--solver=s"]) == (["train", "--solver=s"], "logs")
    assert take_log_dir(["train", "-log_dir", "a", "--log_dir=b"]) == (["train"], "b")
    assert take_log_dir(["train"]) == (["train"], None)
    monkeypatch.setenv("GLOG_log_dir", "env_logs")
    assert take_log_dir(["train"]) == (["train"], "env_logs")


def test_log_dir_writes_glog_files(run_dir):
    result = netspec_cli(["train", "--solver=solver.prototxt", "--log_dir=logs"], run_dir)
    assert result.returncode == 0, result.stderr
    logs = run_dir / "logs"
    link = logs / "netspec.INFO"
    assert link.is_symlink()
    target = os.readlink(link)
    host_user = target.split(".log.INFO.")[0]
    assert target.startswith("netspec.") and ".log.INFO." in target and target.endswith(f".{target.split('.')[-1]}")
    assert host_user.count(".") >= 2
    lines = link.read_text().splitlines()
    assert lines[0].startswith("Log file created at: ") and lines[1].startswith("Running on machine: ")
    assert lines[2] == "Log line format: [IWEF]mmdd hh:mm:ss.uuuuuu threadid file:line] msg"
    body = [line for line in lines[3:]]
    assert body == [line for line in result.stderr.splitlines() if line[:1] in "IWEF" and line[1:5].isdigit()]
    assert any("Iteration 3, loss = " in line for line in body)
    assert not (logs / "netspec.WARNING").exists()          # made only when a warning comes


def test_log_dir_parse_log_reads_it(run_dir):
    netspec_cli(["train", "--solver=solver.prototxt", "--log_dir=logs"], run_dir)
    result = netspec_cli(["parse_log", "logs/netspec.INFO", "."], run_dir)
    assert result.returncode == 0, result.stderr
    rows = (run_dir / "netspec.INFO.train").read_text().splitlines()
    assert rows[0].startswith("NumIters,Seconds,LearningRate,loss") and len(rows) == 4


def test_log_dir_unwritable_is_one_line(run_dir):
    (run_dir / "afile").write_text("")
    result = netspec_cli(["train", "--solver=solver.prototxt", "--log_dir=afile/logs"], run_dir)
    assert result.returncode == 1
    assert result.stderr.startswith("netspec: error: --log_dir=afile/logs: cannot write log files there")
    assert result.stderr.count("\n") == 1


# ---------------------------------------------------------------- --on_divergence

def test_cli_divergence_stops_with_a_diverged_snapshot(run_dir):
    result = netspec_cli(["train", "--solver=diverge.prototxt"], run_dir)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("netspec: error: training diverged at iteration ")
    assert ".caffemodel.diverged" in last and "--on_divergence=continue" in last
    names = sorted(os.listdir(run_dir / "snaps"))
    assert len(names) == 2 and all(n.endswith(".diverged") for n in names)


def test_cli_divergence_continue(run_dir):
    result = netspec_cli(["train", "--solver=diverge.prototxt", "--on_divergence=continue"], run_dir)
    assert result.returncode == 0, result.stderr
    assert "Iteration 30, loss = nan" in result.stderr and "Optimization Done." in result.stderr
    assert not (run_dir / "snaps").exists() or not os.listdir(run_dir / "snaps")
    bad = netspec_cli(["train", "--solver=diverge.prototxt", "--on_divergence=ignore"], run_dir)
    assert bad.returncode == 2 and "'ignore' is not one of 'stop', 'continue'" in bad.stderr
