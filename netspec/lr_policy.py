"""Caffe's learning-rate policies: the rate at iteration `it` for a SolverParameter."""
import numpy as np

from .errors import NetspecError

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


def check_policy(param, where="solver"):
    """Refuse a policy or a missing field before training starts, not at iteration 1."""
    policy = param.lr_policy
    if not param.HasField("lr_policy"):
        raise NetspecError(f"{where}: lr_policy is not set (one of: {', '.join(POLICIES)})")
    if policy not in POLICIES:
        raise NetspecError(f"{where}: unknown lr_policy '{policy}' (one of: {', '.join(POLICIES)})")
    needs = {"step": ("gamma", "stepsize"), "exp": ("gamma",), "inv": ("gamma", "power"),
             "multistep": ("gamma", "stepvalue"), "poly": ("power",), "sigmoid": ("gamma", "stepsize")}
    for field in needs.get(policy, ()):
        present = len(param.stepvalue) if field == "stepvalue" else param.HasField(field)
        if not present:
            raise NetspecError(f"{where}: lr_policy '{policy}' needs '{field}'")
    if policy == "step" and param.stepsize <= 0:
        raise NetspecError(f"{where}: stepsize must be positive, got {param.stepsize}")
    if policy == "poly" and param.max_iter <= 0:
        raise NetspecError(f"{where}: lr_policy 'poly' needs a positive max_iter")


def learning_rate(param, it, current_step=0):
    """Caffe's SGDSolver::GetLearningRate. `current_step` is multistep's position.

    In float64 arithmetic as Caffe computes it (std::pow, std::exp): an overflow
    gives inf, a negative base to a fractional power NaN, never a Python
    exception; Solver refuses a rate that is not finite with one line.
    """
    with np.errstate(all="ignore"):
        return float(_rate(param, np.float64(it), current_step))


def _rate(param, it, current_step):
    base, policy = np.float64(param.base_lr), param.lr_policy
    gamma, power = np.float64(param.gamma), np.float64(param.power)
    if policy == "fixed":
        return base
    if policy == "step":
        return base * np.power(gamma, np.floor(it / param.stepsize))
    if policy == "exp":
        return base * np.power(gamma, it)
    if policy == "inv":
        return base * np.power(1.0 + gamma * it, -power)
    if policy == "multistep":
        return base * np.power(gamma, np.float64(current_step))
    if policy == "poly":
        return base * np.power(1.0 - it / np.float64(param.max_iter), power)
    if policy == "sigmoid":
        return base * (1.0 / (1.0 + np.exp(-gamma * (it - np.float64(param.stepsize)))))
    raise NetspecError(f"unknown lr_policy '{policy}'")


def advance_multistep(param, it, current_step):
    """Caffe advances the multistep index by at most one step per iteration."""
    if current_step < len(param.stepvalue) and it >= param.stepvalue[current_step]:
        current_step += 1
    return current_step
