"""HDF5 snapshots lose no work either (issue 13, item 3, for snapshot_format: HDF5).

Resume from a .solverstate.h5 restores every learnable blob or refuses naming the layers
missing, as the binary path does; the .h5 files netspec writes carry a sha256 attribute over
their datasets (Caffe's reader skips attributes), so a truncated, flipped or edited file is
refused with one line instead of read as other weights.
"""
import subprocess
import sys

import h5py
import numpy as np
import pytest

from netspec import hdf5
from netspec.errors import NetspecError
from netspec.solver import Solver
from test_crash_safety import solver_file, workdir  # noqa: F401  (fixture)


@pytest.fixture
def trained(workdir, monkeypatch):
    """(workdir, .caffemodel.h5, .solverstate.h5) after 2 iterations of the small MLP."""
    monkeypatch.chdir(workdir)
    name = solver_file(workdir, "s.prototxt", max_iter=2, snapshot=2)
    with open(workdir / name, "a") as f:
        f.write("snapshot_format: HDF5\n")
    s = Solver(name)
    s.step(2)
    s.close()
    snap = workdir / "snap"
    return workdir, snap / "mlp_iter_2.caffemodel.h5", snap / "mlp_iter_2.solverstate.h5"


def restore(state):
    s = Solver("s.prototxt")
    try:
        s.restore(str(state))
        return {name: [b.data.copy() for b in layer.blobs] for name, layer in s.net.layer_dict.items() if layer.blobs}
    finally:
        s.close()


def test_netspec_h5_files_carry_a_digest_caffes_layout_unchanged(trained):
    _, model, state = trained
    for path in (model, state):
        with h5py.File(path, "r") as f:
            recorded = f.attrs[hdf5.DIGEST_ATTRIBUTE]
            assert recorded == hdf5.digest(f) and recorded.startswith("netspec-sha256:")
            assert len(f.attrs) == 1          # the only addition: Caffe's datasets are as before
    with h5py.File(model, "r") as f:
        assert sorted(f["data"]) == ["d", "drop", "ip1", "ip2", "loss", "relu"]
        assert sorted(f["data/ip1"]) == ["0", "1"]
    weights = restore(state)
    with h5py.File(model, "r") as f:
        np.testing.assert_array_equal(weights["ip1"][0], f["data/ip1/0"][()])


def test_a_truncated_h5_is_refused_in_one_line(trained):
    _, model, state = trained
    for path in (model, state):
        data = path.read_bytes()
        for cut in (len(data) - 1, len(data) // 2, 100):
            path.write_bytes(data[:cut])
            with pytest.raises(NetspecError) as e:
                restore(state)
            message = str(e.value)
            assert "\n" not in message and path.name in message
            assert "truncated" in message or "not an HDF5 file" in message or "damaged" in message, message
        path.write_bytes(data)
    restore(state)                            # whole again: reads


def test_a_flipped_weight_byte_is_refused(trained):
    _, model, state = trained
    with h5py.File(model, "r") as f:
        offset = f["data/ip2/0"].id.get_offset()       # the raw values of ip2's weights in the file
    data = bytearray(model.read_bytes())
    data[offset + 5] ^= 0x10
    model.write_bytes(bytes(data))
    with h5py.File(model, "r") as f:                    # HDF5 itself sees nothing wrong ...
        f["data/ip2/0"][()]
    with pytest.raises(NetspecError, match=r"mlp_iter_2.caffemodel.h5: the file is corrupted: its datasets do not "
                                           r"match the sha256 netspec recorded"):
        restore(state)


def test_flipped_bytes_anywhere_give_one_line_never_a_traceback(trained):
    _, model, state = trained
    original = model.read_bytes()
    rng = np.random.default_rng(13)
    outcomes = set()
    for offset in rng.choice(len(original), 40, replace=False):
        data = bytearray(original)
        data[offset] ^= 0xFF
        model.write_bytes(bytes(data))
        try:
            restore(state)
            outcomes.add("read")              # a flip in unused padding: nothing that is read changed
        except NetspecError as e:
            assert "\n" not in str(e)
            outcomes.add("refused")
    assert "refused" in outcomes


def _remove_group(path, group, keep_digest):
    with h5py.File(path, "r+") as f:
        del f[group]
        if not keep_digest:                   # as a Caffe-written file: no digest to catch it
            del f.attrs[hdf5.DIGEST_ATTRIBUTE]


def test_a_removed_layer_group_is_refused_by_the_digest(trained):
    _, model, state = trained
    _remove_group(model, "data/ip2", keep_digest=True)
    with pytest.raises(NetspecError, match="the file is corrupted"):
        restore(state)


def test_resume_from_h5_refuses_weights_missing_layers_and_names_them(trained):
    _, model, state = trained
    _remove_group(model, "data/ip2", keep_digest=False)
    with pytest.raises(NetspecError, match=r"mlp_iter_2.caffemodel.h5: holds no weights for layer\(s\) 'ip2' of "
                                           r"the net, so resuming would leave them at their random initialisation"):
        restore(state)


def test_weights_h5_stays_lenient_and_logs_the_layer_left_at_init(trained):
    workdir, model, _ = trained
    _remove_group(model, "data/ip2", keep_digest=False)
    r = subprocess.run([sys.executable, "-m", "netspec", "test", "--model=net.prototxt", f"--weights={model}",
                        "--iterations=1"], cwd=workdir, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-800:]
    assert "Layer ip2 got no weights from" in r.stderr and "Layer ip1 got no weights" not in r.stderr


def test_snapshot_cli_refuses_a_damaged_h5_in_one_line(trained):
    workdir, model, state = trained
    model.write_bytes(model.read_bytes()[:-200])
    r = subprocess.run([sys.executable, "-m", "netspec", "train", "--solver=s.prototxt", f"--snapshot={state}"],
                       cwd=workdir, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("netspec: error:") and "mlp_iter_2.caffemodel.h5" in last, last
