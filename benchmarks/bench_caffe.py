"""netspec against BVLC Caffe's CPU build on this machine: `caffe time` and `netspec time`, alternated.

    .venv/bin/python benchmarks/bench_caffe.py [--rounds 3] [--batch 10] [--threads 2] [--out FILE]

Needs a `caffe` binary on PATH (or --caffe). On Debian 12 one comes from Debian 11's packages:
add a bullseye apt source pinned low (Pin-Priority 100, so nothing else is taken from it), then
`apt-get install -t bullseye caffe` and `apt-get install libopenblas0-pthread` so that Caffe's
libblas.so.3 is OpenBLAS. It is never a dependency of netspec.

Both tools run the same prototxt, with weights left to the file's fillers (the timing does not
depend on them), the same BLAS thread count, in alternation, `--rounds` times; the median of each
figure is reported. The machine's speed drifts (seen here: 1.8x over an hour), so only the ratio
within one run means anything. LeNet from the shipped MNIST LMDBs (scripts/train_lenet builds
them): TRAIN phase, batch 64, forward+backward; TEST phase, batch 100, forward. Deploy nets: TEST
phase, forward only, their Input batch set to --batch.
"""
import argparse
import datetime
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from bench_models import DEPLOY, LENET  # noqa: E402
from netspec.schema import read_net, write_text_message  # noqa: E402
from time_models import set_input_batch  # noqa: E402

FIGURES = {"forward": r"Average Forward pass: ([\d.]+) ms", "backward": r"Average Backward pass: ([\d.]+) ms",
           "both": r"Average Forward-Backward: ([\d.]+) ms"}


def run_time(command, env):
    """Run one `time` command; its figures in ms (both tools print Caffe's summary lines)."""
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    figures = {}
    for key, pattern in FIGURES.items():
        m = re.search(pattern, log)
        if m:
            figures[key] = float(m.group(1))
    figures.setdefault("backward", 0.0)    # netspec's TEST-phase time runs no backward, so prints none
    if proc.returncode != 0 or len(figures) != len(FIGURES):
        tail = "\n".join(log.splitlines()[-5:])
        raise SystemExit(f"{' '.join(command)} failed (exit {proc.returncode}):\n{tail}")
    return figures


def compare(model, phase, iterations, rounds, caffe, env):
    runs = {"caffe": [], "netspec": []}
    flags = [f"--model={model}", f"--iterations={iterations}", f"--phase={phase}"]
    for _ in range(rounds):
        runs["caffe"].append(run_time([caffe, "time"] + [f.replace("--", "-", 1) for f in flags], env))
        runs["netspec"].append(run_time([os.path.join(REPO, ".venv", "bin", "netspec"), "time"] + flags, env))
    return {tool: {k: statistics.median(r[k] for r in results) for k in FIGURES} for tool, results in runs.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--caffe", default=shutil.which("caffe"), help="the caffe binary (default: from PATH)")
    ap.add_argument("--rounds", type=int, default=3, help="alternations of the two tools per net (default 3)")
    ap.add_argument("--lenet-iterations", type=int, default=100)
    ap.add_argument("--iterations", type=int, default=5, help="timed iterations per deploy net (default 5)")
    ap.add_argument("--batch", type=int, default=10, help="deploy nets' batch (default 10)")
    ap.add_argument("--threads", type=int, default=2, help="BLAS threads for both tools (default 2)")
    ap.add_argument("--out", help="also write the table (markdown) here")
    ap.add_argument("models", nargs="*", help="nets to run (default: LeNet train and the five deploy nets)")
    args = ap.parse_args(argv)
    if not args.caffe:
        raise SystemExit("no caffe binary found: install one (see this script's docstring) or pass --caffe")
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads),
               GLOG_minloglevel="0")
    rows = []
    todo = [(LENET, "TRAIN"), (LENET, "TEST")] + [(m, "TEST") for m in DEPLOY]
    if args.models:
        todo = [(m, p) for m, p in todo if m in args.models]
    with tempfile.TemporaryDirectory() as tmp:
        for model, phase in todo:
            if model == LENET:     # the file's own batches: 64 (TRAIN), 100 (TEST)
                path, batch = model, 64 if phase == "TRAIN" else 100
                iterations = args.lenet_iterations
            else:
                param = read_net(os.path.join(REPO, model))
                set_input_batch(param, args.batch)
                path = os.path.join(tmp, os.path.basename(os.path.dirname(model)) + ".prototxt")
                write_text_message(path, param)
                iterations, batch = args.iterations, args.batch
            key = "both" if phase == "TRAIN" else "forward"
            print(f"{model} ({phase}, batch {batch}) ...", file=sys.stderr, flush=True)
            r = compare(path, phase, iterations, args.rounds, args.caffe, env)
            rows.append((model, phase, batch, key, r))
            print(f"    caffe {r['caffe'][key]:.1f} ms, netspec {r['netspec'][key]:.1f} ms", file=sys.stderr)
    lines = ["| net | phase, batch | timed | Caffe ms | netspec ms | netspec / Caffe |", "|---|---|---|---:|---:|---:|"]
    for model, phase, batch, key, r in rows:
        what = "forward+backward" if key == "both" else "forward"
        c, n = r["caffe"][key], r["netspec"][key]
        lines.append(f"| {model} | {phase}, {batch} | {what} | {c:.1f} | {n:.1f} | {n / c:.2f}x |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        version = subprocess.run([args.caffe, "--version"], capture_output=True, text=True)
        version = (version.stdout + version.stderr).strip().splitlines()[-1:] or ["caffe (version unknown)"]
        with open(args.out, "w") as f:
            f.write(f"# netspec vs Caffe, same machine, same run\n\n"
                    f"`benchmarks/bench_caffe.py --rounds {args.rounds}` on "
                    f"{datetime.datetime.now():%Y-%m-%d %H:%M}: {version[0]} ({args.caffe}) against "
                    f"netspec, median of {args.rounds} alternated runs each, {args.threads} BLAS threads.\n\n"
                    f"{table}\n")


if __name__ == "__main__":
    main()
