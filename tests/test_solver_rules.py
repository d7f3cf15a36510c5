"""Learning-rate policies and update rules against values worked out by hand."""
import math

import numpy as np
import pytest

from netspec.errors import NetspecError
from netspec.lr_policy import advance_multistep, check_policy, learning_rate
from netspec.proto import caffe_pb2
from netspec.updates import make_rule


def solver(**fields):
    p = caffe_pb2.SolverParameter(base_lr=0.1)
    for k, v in fields.items():
        if isinstance(v, list):
            getattr(p, k).extend(v)
        else:
            setattr(p, k, v)
    return p


def test_fixed():
    assert learning_rate(solver(lr_policy="fixed"), 1234) == pytest.approx(0.1)


def test_step():
    p = solver(lr_policy="step", gamma=0.5, stepsize=10)
    assert learning_rate(p, 9) == pytest.approx(0.1)
    assert learning_rate(p, 10) == pytest.approx(0.05)
    assert learning_rate(p, 25) == pytest.approx(0.025)


def test_exp():
    p = solver(lr_policy="exp", gamma=0.9)
    assert learning_rate(p, 3) == pytest.approx(0.1 * 0.729)


def test_inv_lenet_numbers():
    # Caffe's LeNet: 0.01 * (1 + 1e-4 * 100)^-0.75 = 0.00992565 (the lr Caffe logs at iteration 100).
    p = solver(lr_policy="inv", gamma=0.0001, power=0.75)
    p.base_lr = 0.01
    assert f"{learning_rate(p, 100):g}" == "0.00992565"
    assert learning_rate(p, 0) == pytest.approx(0.01)


def test_multistep_advances_one_step_per_iteration():
    p = solver(lr_policy="multistep", gamma=0.1, stepvalue=[2, 4])
    step, rates = 0, []
    for it in range(6):
        step = advance_multistep(p, it, step)
        rates.append(learning_rate(p, it, step))
    assert rates == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_poly_and_sigmoid():
    p = solver(lr_policy="poly", power=2.0, max_iter=10)
    assert learning_rate(p, 5) == pytest.approx(0.1 * 0.25)
    p = solver(lr_policy="sigmoid", gamma=0.5, stepsize=4)
    assert learning_rate(p, 6) == pytest.approx(0.1 / (1 + math.exp(-1.0)))


@pytest.mark.parametrize("fields, message", [
    (dict(lr_policy="bogus"), "unknown lr_policy 'bogus'"),
    (dict(lr_policy="step", gamma=0.1), "needs 'stepsize'"),
    (dict(lr_policy="inv", gamma=0.1), "needs 'power'"),
    (dict(lr_policy="multistep", gamma=0.1), "needs 'stepvalue'"),
    (dict(), "lr_policy is not set"),
])
def test_policy_errors(fields, message):
    with pytest.raises(NetspecError, match=message):
        check_policy(solver(**fields), "s.prototxt")


def run_rule(kind, grads, weights=1.0, **fields):
    """Apply `kind` to one scalar parameter for each gradient; return the steps it produced."""
    p = solver(type=kind, **fields)
    rule = make_rule(p)
    history = [np.zeros(1) for _ in range(rule.num_histories)]
    steps = []
    for it, g in enumerate(grads):
        diff = np.array([g], dtype=np.float64)
        rule.update(diff, history, 0.1, it)
        steps.append(float(diff[0]))
    return steps


def test_sgd_momentum():
    # v1 = 0.1*1 = 0.1; v2 = 0.9*0.1 + 0.1*2 = 0.29
    assert run_rule("SGD", [1.0, 2.0], momentum=0.9) == pytest.approx([0.1, 0.29])


def test_nesterov():
    # h1 = 0.1; step1 = 1.9*0.1 - 0.9*0 = 0.19; h2 = 0.09 + 0.2 = 0.29; step2 = 1.9*0.29 - 0.9*0.1 = 0.461
    assert run_rule("Nesterov", [1.0, 2.0], momentum=0.9) == pytest.approx([0.19, 0.461])


def test_adagrad():
    # h1 = 1, step1 = 0.1*1/(1+d); h2 = 5, step2 = 0.1*2/sqrt(5)
    assert run_rule("AdaGrad", [1.0, 2.0], delta=1e-8) == pytest.approx([0.1, 0.2 / math.sqrt(5)], rel=1e-6)


def test_rmsprop():
    # h1 = 0.01*1 = 0.01 -> step1 = 0.1*1/0.1 = 1.0; h2 = 0.99*0.01 + 0.01*4 = 0.0499
    steps = run_rule("RMSProp", [1.0, 2.0], rms_decay=0.99, delta=1e-8)
    assert steps == pytest.approx([1.0, 0.2 / math.sqrt(0.0499)], rel=1e-6)


def test_adadelta():
    # g1=1: hg = 0.05; upd = 1*sqrt(0+d)/sqrt(0.05+d); hu = 0.05*upd^2; step = 0.1*upd
    d, m = 1e-6, 0.95
    hg = (1 - m) * 1.0
    upd = math.sqrt(d) / math.sqrt(hg + d)
    hu = (1 - m) * upd ** 2
    hg2 = m * hg + (1 - m) * 4.0
    upd2 = 2.0 * math.sqrt(hu + d) / math.sqrt(hg2 + d)
    steps = run_rule("AdaDelta", [1.0, 2.0], momentum=m, delta=d)
    assert steps == pytest.approx([0.1 * upd, 0.1 * upd2], rel=1e-6)  # params are float32


def test_adam_bias_correction():
    b1, b2, eps = 0.9, 0.999, 1e-8
    m1, v1 = 0.1 * 1.0, 0.001 * 1.0
    s1 = 0.1 * math.sqrt(1 - b2) / (1 - b1) * m1 / (math.sqrt(v1) + eps)
    m2, v2 = b1 * m1 + 0.1 * 2.0, b2 * v1 + 0.001 * 4.0
    s2 = 0.1 * math.sqrt(1 - b2 ** 2) / (1 - b1 ** 2) * m2 / (math.sqrt(v2) + eps)
    steps = run_rule("Adam", [1.0, 2.0], momentum=b1, momentum2=b2, delta=eps)
    assert steps == pytest.approx([s1, s2], rel=1e-6)  # params are float32


def test_unknown_solver_type():
    with pytest.raises(NetspecError, match="unknown solver type 'Foo'"):
        make_rule(solver(type="Foo"))
