"""`netspec time` and `netspec device_query`: per-layer timings in `caffe time`'s words."""
import os
import platform
import time

import numpy as np

from . import glog


def time_net(net, iterations, backward=True):
    """Time each layer's forward and backward over `iterations` passes; log Caffe's summary lines.

    Returns {"forward_ms", "backward_ms", "total_ms", "layers": [(name, fwd_ms, bwd_ms)]}.
    """
    glog.info("Performing Forward", "caffe.cpp:351")
    loss = net.forward_prefilled()
    glog.info(f"Initial loss: {loss:g}", "caffe.cpp:353")
    if backward:
        glog.info("Performing Backward", "caffe.cpp:354")
        net.backward_from_to()
    records = net.records
    fwd, bwd = np.zeros(len(records)), np.zeros(len(records))
    glog.info("*** Benchmark begins ***", "caffe.cpp:360")
    glog.info(f"Testing for {iterations} iterations.", "caffe.cpp:361")
    clock = time.perf_counter
    total_start = clock()
    for it in range(iterations):
        iter_start = clock()
        for i, record in enumerate(records):
            t = clock()
            record.forward()
            fwd[i] += clock() - t
        if backward:
            for i in reversed(range(len(records))):
                if records[i].need_backward:
                    t = clock()
                    records[i].backward()
                    bwd[i] += clock() - t
        glog.info(f"Iteration: {it + 1} forward-backward time: {(clock() - iter_start) * 1e3:.3f} ms.",
                  "caffe.cpp:389")
    total = clock() - total_start
    glog.info("Average time per layer: ", "caffe.cpp:392")
    rows = []
    for record, f, b in zip(records, fwd, bwd):
        name, f_ms, b_ms = record.name, f * 1e3 / iterations, b * 1e3 / iterations
        rows.append((name, f_ms, b_ms))
        glog.info(f"{name:>10}\tforward: {f_ms:.5g} ms.", "caffe.cpp:395")
        if backward:
            glog.info(f"{name:>10}\tbackward: {b_ms:.5g} ms.", "caffe.cpp:398")
    f_avg, b_avg = fwd.sum() * 1e3 / iterations, bwd.sum() * 1e3 / iterations
    glog.info(f"Average Forward pass: {f_avg:.5g} ms.", "caffe.cpp:403")
    if backward:
        glog.info(f"Average Backward pass: {b_avg:.5g} ms.", "caffe.cpp:405")
    glog.info(f"Average Forward-Backward: {total * 1e3 / iterations:.5g} ms.", "caffe.cpp:407")
    glog.info(f"Total Time: {total * 1e3:.5g} ms.", "caffe.cpp:409")
    glog.info("*** Benchmark ends ***", "caffe.cpp:410")
    return {"forward_ms": f_avg, "backward_ms": b_avg, "total_ms": total * 1e3 / iterations, "layers": rows}


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _blas_description():
    try:
        from threadpoolctl import threadpool_info
        pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        if pools:
            p = pools[0]
            return f"{p.get('internal_api')} {p.get('version')} ({p.get('num_threads')} threads)"
    except ImportError:
        pass
    try:
        config = np.show_config(mode="dicts")
        blas = config.get("Build Dependencies", {}).get("blas", {})
        return f"{blas.get('name', 'unknown')} {blas.get('version', '')}".strip()
    except (TypeError, AttributeError):
        return "unknown"


def describe_machine():
    return [
        "Device: CPU (netspec computes on the CPU with numpy)",
        f"CPU: {_cpu_model()}",
        f"Cores: {os.cpu_count()}",
        f"BLAS: {_blas_description()}",
        f"numpy: {np.__version__}",
    ]
