"""Running the compiled kernels under each instruction set this CPU runs (netspec/_native.c has
an SSE2 baseline copy of every kernel and, built with GCC on x86, an AVX2 one)."""
from netspec.layers import native


def isas():
    """The instruction sets this CPU runs the kernels on, baseline first; the default restored after."""
    kernels = native.kernels
    if kernels is None or not hasattr(kernels, "set_isa"):
        return []
    default, found = kernels.isa(), ["baseline"]
    try:
        kernels.set_isa("avx2")
        found.append("avx2")
    except ValueError:
        pass
    kernels.set_isa(default)
    return found


def on_every_isa(run):
    """[run() under each of isas()], the default instruction set restored after."""
    kernels, results = native.kernels, []
    default = kernels.isa()
    try:
        for isa in isas():
            kernels.set_isa(isa)
            results.append(run())
    finally:
        kernels.set_isa(default)
    return results
