"""Caffe's learning-rate policies: the rate at iteration `it` for a SolverParameter."""
import math

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
    """Caffe's SGDSolver::GetLearningRate. `current_step` is multistep's position."""
    base, policy = param.base_lr, param.lr_policy
    if policy == "fixed":
        return base
    if policy == "step":
        return base * param.gamma ** (it // param.stepsize)
    if policy == "exp":
        return base * param.gamma ** it
    if policy == "inv":
        return base * (1.0 + param.gamma * it) ** (-param.power)
    if policy == "multistep":
        return base * param.gamma ** current_step
    if policy == "poly":
        return base * (1.0 - it / param.max_iter) ** param.power
    if policy == "sigmoid":
        return base / (1.0 + math.exp(-param.gamma * (it - param.stepsize)))
    raise NetspecError(f"unknown lr_policy '{policy}'")


def advance_multistep(param, it, current_step):
    """Caffe advances the multistep index by at most one step per iteration."""
    if current_step < len(param.stepvalue) and it >= param.stepvalue[current_step]:
        current_step += 1
    return current_step
