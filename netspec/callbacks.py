"""Solver callbacks: Caffe's Solver::Callback, plus the moments netspec's snapshots and MPI need.

A Solver calls every callback in its list, in the order added, at fixed points:

    solve():   root restores --snapshot -> on_solve(solver, resume_file)
    each iteration:  test -> on_start(solver) -> forward/backward (x iter_size)
                     -> loss = on_gradients_ready(solver, loss) -> log -> update -> snapshot
    snapshot(): resume = on_snapshot(solver, resume); None means "this process writes nothing"
    solve()'s closing display: loss = on_loss(solver, loss)

pycaffe's `solver.add_callback(on_start, on_gradients_ready)` wraps two functions of no
arguments in a FunctionCallback; netspec.parallel.DataParallel is one SolverCallback.
"""


class SolverCallback:
    """Override what you need; every hook's default does nothing."""

    def on_solve(self, solver, resume_file):
        """Once, before the first iteration of solve(), after the root rank restored resume_file."""

    def on_start(self, solver):
        """At the start of each iteration, after testing, before forward/backward (Caffe's on_start)."""

    def on_gradients_ready(self, solver, loss):
        """Once the iteration's gradients are in the params' diffs (Caffe's on_gradients_ready);
        returns the iteration's loss to log (data parallelism: averaged over the ranks)."""
        return loss

    def on_loss(self, solver, loss):
        """A loss computed outside an iteration (solve's closing display); returns the loss to log."""
        return loss

    def on_snapshot(self, solver, resume):
        """Before a snapshot is written: returns the resume payload to store, or None to write nothing."""
        return resume

    def agreed_action(self):
        """The signal action every rank acts on ("none", "stop", "snapshot"), or None: ask action_request."""
        return None


class FunctionCallback(SolverCallback):
    """pycaffe's add_callback(on_start, on_gradients_ready): two functions of no arguments."""

    def __init__(self, on_start, on_gradients_ready):
        for name, f in (("on_start", on_start), ("on_gradients_ready", on_gradients_ready)):
            if not callable(f):
                raise TypeError(f"add_callback: {name} must be a function of no arguments, got {f!r}")
        self.start, self.gradients_ready = on_start, on_gradients_ready

    def on_start(self, solver):
        self.start()

    def on_gradients_ready(self, solver, loss):
        self.gradients_ready()
        return loss
