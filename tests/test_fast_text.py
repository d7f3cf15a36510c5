"""The fast prototxt reader (netspec/fast_text.py) builds exactly what text_format builds, or gives up.

Its contract: whenever it returns a message, text_format parses the same text to an equal
message (same bytes); wherever it cannot vouch for that, it returns None and text_format
decides (and words any error). Checked on every prototxt in the repository, on texts made to
sit on each edge of its subset, and on a few hundred random mutations of real nets.
"""
import glob
import os
import random

import pytest
from google.protobuf import text_format

from netspec import fast_text
from netspec.proto import caffe_pb2
from netspec.schema import parse_prototxt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared")
# The repository's own files, and the model-zoo and fork corpus when it is beside the checkout.
PROTOTXTS = sorted(p for p in glob.glob(os.path.join(REPO, "**", "*.prototxt"), recursive=True)
                   if "/.venv/" not in p) + \
    sorted(glob.glob(os.path.join(SHARED, "caffe-corpus", "**", "*.prototxt"), recursive=True)) + \
    sorted(glob.glob(os.path.join(SHARED, "caffe-forks", "**", "*.prototxt"), recursive=True))
CLASSES = (caffe_pb2.NetParameter, caffe_pb2.SolverParameter)


def reference(text, cls):
    """text_format's message, or None when it refuses the text."""
    try:
        return text_format.Parse(text, cls())
    except text_format.ParseError:
        return None


def agree(text, cls):
    """Assert the contract for one text; True when the fast reader took it."""
    fast = fast_text.parse(text, cls())
    if fast is None:
        return False
    ref = reference(text, cls)
    assert ref is not None, f"fast reader accepted what text_format refuses: {text!r}"
    assert fast.SerializeToString(deterministic=True) == ref.SerializeToString(deterministic=True), text
    return True


def test_every_prototxt_in_the_repository_and_corpus_reads_the_same():
    taken = 0
    for path in PROTOTXTS:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        for cls in CLASSES:
            taken += agree(text, cls)
    assert taken > len(PROTOTXTS) // 2        # the fast path is the one real nets take


@pytest.mark.parametrize("name", ["lenet/lenet_train_test.prototxt", "googlenet/deploy.prototxt",
                                  "caffenet/train_val.prototxt"])
def test_the_shipped_nets_take_the_fast_path(name):
    with open(os.path.join(REPO, "models", name)) as f:
        assert agree(f.read(), caffe_pb2.NetParameter)


EDGES = [
    'name: "a" "b"',                                   # adjacent strings concatenate
    "name: 'a' 'b'",
    'layer { name: "x" bottom: "a" "b" }',
    'name: "a\\"b"',                                   # escapes
    'name: "a\\n"',
    'name: "caf\\303\\251"',
    'name: "unterminated',
    "name: 'mixed\"",
    'layer { top: "a" top: "b" } layer < name: "x" >',  # angle brackets
    'layer { bottom: ["a", "b"] }',                    # list syntax
    'layer { name: "x"; type: "ReLU", }',              # separators
    'input_dim: 0x10',                                 # hex, octal, signs
    'input_dim: 010',
    'base_lr: 05', 'base_lr: 00.5', 'base_lr: 0.5', 'base_lr: 0e3', 'base_lr: -0', 'base_lr: -05',
    'input_dim: +5',
    'input_dim: -5',
    'input_dim: 1dim: 2',                              # one bad token, never two good ones
    'input_dim: 1.0',
    'input_dim: 4294967296',                           # out of range for int32
    'input_dim: 99999999999999999999',
    'layer { convolution_param { num_output: -1 } }',   # negative into uint32
    'layer { loss_weight: inf }',                      # float spellings
    'layer { loss_weight: -inf }',
    'layer { loss_weight: nan }',
    'layer { loss_weight: 1e5 }',
    'layer { loss_weight: 1.5f }',
    'layer { loss_weight: .5 }',
    'layer { loss_weight: 5. }',
    'layer { loss_weight: 1e-3 }',
    'layer { loss_weight: 1e+3 }',
    'layer { loss_weight: 1e }',
    'layer { loss_weight: 3.4e39 }',                   # past float32: text_format's business
    'force_backward: t',                               # bool spellings
    'force_backward: True',
    'force_backward: 1',
    'force_backward: true',
    'force_backward: false',
    'force_backward: yes',
    'state { phase: TEST }',                           # enums by name and by number
    'state { phase: 1 }',
    'state { phase: 7 }',
    'state { phase: test }',
    'state { phase: "TEST" }',
    'name: "a" name: "b"',                             # a singular field twice
    'state { phase: TEST } state { level: 1 }',
    'layer { name: "a" } layer { name: "b" }',         # a repeated one twice: fine
    'layer: { name: "a" }',                            # colon before a brace: allowed
    'layer { }',
    'state { }',
    'name "a"',                                        # a scalar without its colon
    'layer { name: "a" ',                              # unclosed, overclosed
    'layer { name: "a" } }',
    'nosuchfield: 1',
    'layer { nosuchfield: 1 }',
    'Layer { name: "a" }',
    'name: a',                                         # a string needs quotes
    'name: 5',
    'layer { blobs { data: 1 data: 2 } }',
    'layer { python_param { param_str: "{\'a\': 1}" } }',
    '# only a comment',
    '',
    '\n\n   \t',
    'name: "a" # trailing comment',
    'name: "a"\n# a comment\nlayer { name: "b" } # another',
    'name:"a"layer{name:"b"}',                          # no spaces at all
    'name: "é ü 中文"',                                  # non-ASCII in a string
    'name: "a\u00a0b"',
    'name:\u00a0"a"',                                   # a Unicode space between tokens
    'name: "tab\there"',
    'name: "cr\rhere"',
    '[ext]: 1',
    'layer { name: "x" type: "ReLU" bottom: "a" top: "a" propagate_down: true propagate_down: false }',
    'layer { param { lr_mult: 1 decay_mult: 0 } param { lr_mult: 2 } }',
    'input_shape { dim: 1 dim: 3 dim: -1 }',
    'input_shape { dim: 9223372036854775807 }',
    'input_shape { dim: 9223372036854775808 }',
    'layer { include { phase: TRAIN stage: "s" } exclude { not_stage: "t" } }',
]


@pytest.mark.parametrize("text", EDGES)
def test_each_edge_of_the_subset(text):
    for cls in CLASSES:
        agree(text, cls)


def test_the_edges_it_must_leave_to_text_format():
    must_decline = ['name: "a" "b"', 'input_dim: 1dim: 2', 'name: "a" name: "b"', 'input_dim: 0x10',
                    'layer { loss_weight: inf }', 'force_backward: t', 'name: "a\\n"', 'input_dim: 4294967296']
    for text in must_decline:
        assert fast_text.parse(text, caffe_pb2.NetParameter()) is None, text


def _mutations(text, rng, count):
    pieces = ['"', "'", "{", "}", ":", " ", "\n", "#", "\\", "1", "-", ".", "e", ";", ",", "<", "[", "x",
              'name: "q"', "layer {", "}", "phase: TEST", "dim: 3"]
    for _ in range(count):
        chars = list(text)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(chars) + 1)
            action = rng.random()
            if action < 0.4 and chars:
                del chars[min(i, len(chars) - 1)]
            elif action < 0.8:
                chars.insert(i, rng.choice(pieces))
            elif chars:
                j = rng.randrange(len(chars))
                chars[i % len(chars)], chars[j] = chars[j], chars[i % len(chars)]
        yield "".join(chars)


def test_random_mutations_of_real_nets_keep_the_contract():
    rng = random.Random(13)
    with open(os.path.join(REPO, "models/lenet/lenet_train_test.prototxt")) as f:
        net = f.read()
    with open(os.path.join(REPO, "solvers/lenet_solver.prototxt")) as f:
        solver = f.read()
    taken = 0
    for text, cls in ((net, caffe_pb2.NetParameter), (solver, caffe_pb2.SolverParameter)):
        for mutated in _mutations(text, rng, 1500):
            taken += agree(mutated, cls)
    assert taken > 50                 # many mutations stay plain prototxt and are read fast


def test_a_text_it_declines_still_gets_text_formats_error_with_line_and_column():
    from netspec.errors import ParseError
    with pytest.raises(ParseError) as e:
        parse_prototxt('name: "a"\nlayer { name: "b" nosuch: 1 }\n', caffe_pb2.NetParameter(), "net.prototxt")
    assert str(e.value).startswith("net.prototxt:2:")
    # and a text it gave up on part way is read whole by text_format, nothing left from the first try
    m = parse_prototxt('layer { name: "a" }\nlayer { name: "b" loss_weight: 1e5 bottom: "x" "y" }',
                       caffe_pb2.NetParameter())
    assert [l.name for l in m.layer] == ["a", "b"] and list(m.layer[1].bottom) == ["xy"]
