"""prototxt <-> YAML conversion (netspec/convert.py) and the YAML loader's errors (netspec/schema.py)."""
from pathlib import Path

import pytest
from click.testing import CliRunner

from netspec import schema
from netspec.commands.files import convert_command, upgrade_command
from netspec.convert import convert_file, read_message, upgrade_file
from netspec.errors import NetspecError, ParseError
from netspec.proto import caffe_pb2
from netspec.upgrade import upgrade_needed

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "caffe-corpus"
MALFORMED = "BVLC-caffe-v1-format/examples/mnist/mnist_autoencoder.prototxt"


def corpus_files():
    if not CORPUS.is_dir():
        return []
    return sorted(str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*.prototxt") if not str(p).endswith(MALFORMED))


def repo_files():
    found = set()
    for pattern in ("models/*.prototxt", "models/**/*.prototxt", "solvers/*.prototxt",
                    "models/**/*.yaml", "solvers/*.yaml"):
        found.update(str(p.relative_to(ROOT)) for p in ROOT.glob(pattern))
    return sorted(found)


def round_trip(src, tmp_path):
    """src -> the other format -> src's format; every reading must give the same message."""
    kind, original = read_message(src)
    middle_suffix, back_suffix = (".prototxt", ".yaml") if str(src).endswith((".yaml", ".yml")) else (".yaml", ".prototxt")
    middle = tmp_path / f"middle{middle_suffix}"
    back = tmp_path / f"back{back_suffix}"
    assert convert_file(src, middle, kind) == kind
    assert convert_file(middle, back, kind) == kind  # reads `middle` back in
    assert read_message(back, kind)[1] == original
    return kind, original


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"Caffe corpus not found at {CORPUS}")
@pytest.mark.parametrize("rel", corpus_files())
def test_corpus_round_trips_through_yaml(rel, tmp_path):
    kind, original = round_trip(CORPUS / rel, tmp_path)
    if kind == "net" and upgrade_needed(original):
        # The upgraded net survives the trip as well (V1 files arrive as current-format YAML).
        upgraded_yaml = tmp_path / "upgraded.yaml"
        upgrade_file(CORPUS / rel, upgraded_yaml, "net")
        assert schema.read_net(upgraded_yaml) == schema.read_net(CORPUS / rel)
        assert "layers:" not in upgraded_yaml.read_text()


@pytest.mark.skipif(not repo_files(), reason="no models/*.prototxt, models/**/*.prototxt or solvers/*.prototxt yet")
@pytest.mark.parametrize("rel", repo_files() or ["-"])
def test_repo_models_and_solvers_round_trip(rel, tmp_path):
    kind, _ = round_trip(ROOT / rel, tmp_path)
    (schema.read_solver if kind == "solver" else schema.read_net)(ROOT / rel)


def test_yaml_spelling(tmp_path):
    src = tmp_path / "net.prototxt"
    src.write_text('name: "tiny"\nlayer { name: "d" type: "Input" top: "d" input_param { shape { dim: 2 dim: 3 } } }\n'
                   'layer { name: "p" type: "Pooling" bottom: "d" top: "p" pooling_param { pool: AVE kernel_size: 2 } '
                   'include { phase: TEST } }\n')
    out = tmp_path / "net.yml"
    convert_file(src, out)
    data = __import__("yaml").safe_load(out.read_text())
    assert data["name"] == "tiny"
    assert data["layer"][0]["input_param"] == {"shape": [{"dim": [2, 3]}]}
    assert data["layer"][1]["pooling_param"] == {"pool": "AVE", "kernel_size": 2}  # enums by name
    assert data["layer"][1]["include"] == [{"phase": "TEST"}]


def test_float_values_survive_exactly(tmp_path):
    src = tmp_path / "solver.prototxt"
    src.write_text('base_lr: 0.1\nweight_decay: 0.0005\ndelta: 1e-08\nmomentum: 0.9\ngamma: 0.00390625\n'
                   'random_seed: 1701\nmax_iter: 10000\nlr_policy: "inv"\ntype: "Adam"\n')
    kind, original = round_trip(src, tmp_path)
    assert kind == "solver" and original.delta == pytest.approx(1e-8)


# ------------------------------------------------------------------ net or solver

def test_kind_from_name_and_from_contents(tmp_path):
    solver_text = 'net: "n.prototxt"\nbase_lr: 0.01\nmax_iter: 10\n'
    named = tmp_path / "my_solver.prototxt"
    named.write_text(solver_text)
    assert read_message(named)[0] == "solver"
    # No "solver" in the name: the net reading stops at base_lr, a solver-only field.
    unnamed = tmp_path / "train.prototxt"
    unnamed.write_text(solver_text)
    kind, message = read_message(unnamed)
    assert kind == "solver" and message.max_iter == 10
    # "solver" in the name but net contents: `layer` is not a solver field.
    net_named_solver = tmp_path / "solver_net.yaml"
    net_named_solver.write_text("name: n\nlayer:\n- {name: r, type: ReLU}\n")
    assert read_message(net_named_solver)[0] == "net"


def test_kind_errors(tmp_path):
    src = tmp_path / "train.prototxt"
    src.write_text('net: "n.prototxt"\nbase_lr: 0.01\n')
    with pytest.raises(ParseError, match='has no field named "net"'):
        read_message(src, "net")  # --net forces the net reading
    # A typo in a net is reported as a net error, not a failed solver reading.
    typo = tmp_path / "typo.prototxt"
    typo.write_text('name: "n"\nlayr { name: "a" }\n')
    with pytest.raises(ParseError, match=r'typo\.prototxt:2:1: .*"caffe\.NetParameter" has no field named "layr"'):
        read_message(typo)
    # A solver with a typo after a solver-only field is reported against the solver.
    bad_solver = tmp_path / "train2.prototxt"
    bad_solver.write_text('base_lr: 0.01\nmax_itr: 10\n')
    with pytest.raises(ParseError, match=r':2:1: .*"caffe\.SolverParameter" has no field named "max_itr"'):
        read_message(bad_solver)


def test_unknown_output_extension(tmp_path):
    src = tmp_path / "n.prototxt"
    src.write_text('name: "n"\n')
    with pytest.raises(NetspecError, match=r"n\.json: cannot tell the output format"):
        convert_file(src, tmp_path / "n.json")
    assert not (tmp_path / "n.json").exists()


def test_convert_overwrites_atomically(tmp_path):
    src = tmp_path / "a.prototxt"
    src.write_text('name: "first"\n')
    dst = tmp_path / "a.yaml"
    dst.write_text("name: old\n")
    convert_file(src, dst)
    assert read_message(dst)[1].name == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.prototxt", "a.yaml"]  # no temp files left


# ------------------------------------------------------------------ CLI

def run(command, args):
    return CliRunner().invoke(command, [str(a) for a in args])


V1_TEXT = ('name: "old"\ninput: "data"\ninput_dim: 1\ninput_dim: 1\ninput_dim: 2\ninput_dim: 2\n'
           'layers { name: "ip" type: INNER_PRODUCT bottom: "data" top: "ip" blobs_lr: 1 blobs_lr: 2 '
           'inner_product_param { num_output: 3 } }\n')


def test_convert_command(tmp_path):
    src = tmp_path / "old.prototxt"
    src.write_text(V1_TEXT)
    out = tmp_path / "old.yaml"
    result = run(convert_command, [src, out])
    assert result.exit_code == 0, result.output
    assert "wrote net" in result.stdout and "YAML" in result.stdout
    # convert keeps the old format as it is; upgrading is a separate step.
    assert read_message(out)[1] == read_message(src)[1]
    assert "layers:" in out.read_text()
    assert schema.read_net(out) == schema.read_net(src)  # a V1 net in YAML upgrades on load too

    result = run(convert_command, [src, tmp_path / "s.yaml", "--solver"])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"netspec: error: {src}:1:1: ")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output


def test_convert_command_missing_file(tmp_path):
    result = run(convert_command, [tmp_path / "nope.prototxt", tmp_path / "x.yaml"])
    assert result.exit_code == 1
    assert result.stderr == f"netspec: error: {tmp_path / 'nope.prototxt'}: no such file\n"


def test_upgrade_command(tmp_path):
    src = tmp_path / "old.prototxt"
    src.write_text(V1_TEXT)
    out = tmp_path / "new.prototxt"
    result = run(upgrade_command, [src, out])
    assert result.exit_code == 0, result.output
    assert "upgraded net" in result.stdout and "V1 layers" in result.stdout and "input" in result.stdout
    text = out.read_text()
    assert "layers {" not in text and 'type: "InnerProduct"' in text and "lr_mult: 2" in text
    upgraded = read_message(out)[1]
    assert [(l.name, l.type) for l in upgraded.layer] == [("input", "Input"), ("ip", "InnerProduct")]

    again = run(upgrade_command, [out, tmp_path / "same.yaml"])
    assert again.exit_code == 0 and "already in the current format" in again.stdout
    assert read_message(tmp_path / "same.yaml")[1] == upgraded


def test_upgrade_command_solver_and_errors(tmp_path):
    solver = tmp_path / "old_solver.prototxt"
    solver.write_text('net: "n.prototxt"\nsolver_type: RMSPROP\n')
    result = run(upgrade_command, [solver, tmp_path / "new_solver.yaml"])
    assert result.exit_code == 0 and "solver_type" in result.stdout
    assert "type: RMSProp" in (tmp_path / "new_solver.yaml").read_text()

    mixed = tmp_path / "mixed.prototxt"
    mixed.write_text('layer { name: "a" type: "ReLU" }\nlayers { name: "b" type: RELU }\n')
    result = run(upgrade_command, [mixed, tmp_path / "out.prototxt"])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"netspec: error: {mixed}: the net mixes 'layer'")
    assert not (tmp_path / "out.prototxt").exists()


# ------------------------------------------------------------------ the YAML loader's errors

def yaml_error(tmp_path, text, message=caffe_pb2.NetParameter):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ParseError) as info:
        schema.read_text_message(path, message())
    return path, info.value


def test_yaml_malformed_gives_line_and_column(tmp_path):
    path, err = yaml_error(tmp_path, "name: n\nlayer:\n  - name: a\n    type: [ReLU\n")
    assert str(err).startswith(f"{path}:")
    assert err.line >= 4 and err.col >= 1
    assert "malformed YAML" in str(err)
    path, err = yaml_error(tmp_path, "name: n\n  bad indent: 1\n")
    assert (err.line, str(err).startswith(f"{path}:2:")) == (2, True)


def test_yaml_unknown_field_names_field_and_message(tmp_path):
    path, err = yaml_error(tmp_path, "name: n\nlayer:\n- name: a\n  type: ReLU\n  relu_param: {slope: 0.1}\n")
    assert str(err).startswith(f"{path}:5:16: ")
    assert '"caffe.ReLUParameter"' in str(err) and '"slope"' in str(err)
    path, err = yaml_error(tmp_path, "nmae: n\n")
    assert str(err) == f'{path}:1:1: Message type "caffe.NetParameter" has no field named "nmae" (did you mean "name"?)'


def test_yaml_unknown_enum_value(tmp_path):
    path, err = yaml_error(tmp_path, "layer:\n- name: p\n  pooling_param:\n    pool: MEDIAN\n")
    assert str(err).startswith(f"{path}:4:11: ")
    assert "MEDIAN" in str(err) and "'pool'" in str(err) and "MAX" in str(err) and "AVE" in str(err)


def test_yaml_wrong_type(tmp_path):
    path, err = yaml_error(tmp_path, "layer:\n- name: c\n  convolution_param: {num_output: lots}\n")
    assert str(err).startswith(f"{path}:3:35: ")
    assert "num_output" in str(err) and "'lots'" in str(err) and "number" in str(err)
    path, err = yaml_error(tmp_path, "base_lr: fast\n", caffe_pb2.SolverParameter)
    assert str(err).startswith(f"{path}:1:10: ") and "base_lr" in str(err)
    path, err = yaml_error(tmp_path, "name: [a, b]\n")
    assert err.line == 1 and "not repeated" in str(err)
    path, err = yaml_error(tmp_path, "force_backward: maybe\n")
    assert err.line == 1 and "true or false" in str(err)


# ------------------------------------------------------------------ edge cases of the YAML spelling

def test_empty_submessage_round_trips(tmp_path):
    src = tmp_path / "n.prototxt"
    src.write_text('layer { name: "d" type: "Dropout" dropout_param { } }\n')
    round_trip(src, tmp_path)


def test_infinite_float_round_trips(tmp_path):
    src = tmp_path / "n.prototxt"
    src.write_text('layer { name: "c" type: "Clip" clip_param { min: -inf max: inf } }\n')
    round_trip(src, tmp_path)
