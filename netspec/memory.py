"""The whole net's memory, estimated while it is built and checked against what the process may use.

numpy's zeroed arrays take no memory until written, so a net of four 11 GiB
blobs is built without complaint on a 24 GiB machine and then OOM-killed in its
first forward. So Net::Init adds up, layer by layer, every new top blob (data
and diff), every parameter (data and diff) and the largest work buffer (the
convolution columns, pooled between layers) plus the work arrays each layer
keeps of its own (Layer.work_bytes: masks, saved inputs, argmax indices, LRN
scales, softmax probabilities), and refuses the net as soon as the total passes the budget: MemAvailable, or the address space RLIMIT_AS
still allows (`ulimit -v`), whichever is smaller. The message names the
largest layers and says what makes them large.
"""
import resource

from .errors import NetspecError


def _meminfo(field):
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _address_space_used():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def budget():
    """(bytes a new allocation may still get, what limits it), or (None, None) when unknown."""
    limits = []
    available = _meminfo("MemAvailable")
    if available is not None:
        limits.append((available, "the machine's available memory"))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append((max(0, soft - _address_space_used()), "the address-space limit (ulimit -v)"))
    return min(limits) if limits else (None, None)


def _gib(n):
    return f"{n / 2 ** 30:.2f} GiB"


def own_work_bytes(layer, bottoms, tops):
    """What the layer says it keeps of its own (Layer.work_bytes; 0 for a layer without the hook)."""
    hook = getattr(layer, "work_bytes", None)
    return int(hook(bottoms, tops)) if hook is not None else 0


def work_bytes(layer, bottoms, tops):
    """The shared work buffer a layer's forward/backward takes from the pool all layers share, so
    that the net holds only the largest (Layer.shared_work_bytes: the convolutions' im2col columns)."""
    hook = getattr(layer, "shared_work_bytes", None)
    return int(hook(bottoms, tops)) if hook is not None and bottoms else 0


def _mostly(blobs, params, work):
    """What makes a layer large: its outputs, unless its parameters or its work buffers exceed them."""
    if params > blobs and params >= work:
        return "in parameters"
    if work > blobs:
        return "in work buffers"
    return "in outputs"


class MemoryEstimate:
    """Bytes per layer as the net is built; `check` raises once the total passes the budget."""

    def __init__(self):
        self.layers = []               # (name, type, blob bytes, param bytes, own work bytes)
        self.work = 0                  # the shared work buffer: the largest any layer needs
        self.total_fixed = 0
        self.limit, self.limited_by = budget()

    @property
    def total(self):
        return self.total_fixed + self.work

    def add(self, name, type_, new_tops, params, work=0, own_work=0):
        blob_bytes = sum(2 * b.count * b.data.itemsize for b in new_tops)
        param_bytes = sum(2 * b.count * b.data.itemsize for b in params)
        self.layers.append((name, type_, blob_bytes, param_bytes, own_work))
        self.total_fixed += blob_bytes + param_bytes + own_work
        self.work = max(self.work, work)

    def check(self, net_name=None):
        if self.limit is None or self.total <= self.limit:
            return
        raise NetspecError(self.describe(f"needs at least {_gib(self.total)}"))

    def largest(self):
        """`'conv1' (Convolution) 2.00 GiB in outputs, ...`: the three layers holding the most."""
        largest = sorted(self.layers, key=lambda l: l[2] + l[3] + l[4], reverse=True)[:3]
        return ", ".join(f"'{n}' ({t}) {_gib(b + p + w)} " + _mostly(b, p, w) for n, t, b, p, w in largest)

    def describe(self, needs):
        blobs = sum(l[2] for l in self.layers)
        params = sum(l[3] for l in self.layers)
        work = self.work + sum(l[4] for l in self.layers)
        if params > blobs and params > work:
            hint = "the parameters dominate: a smaller num_output or kernel, not batch_size, is what helps"
        elif work > blobs:
            hint = ("the layers' work buffers dominate: they scale with batch_size and the input size "
                    "(a smaller batch_size helps)")
        else:
            hint = "the layer outputs dominate: they scale with batch_size and the input size"
        return (f"the net {needs} (outputs and their gradients {_gib(blobs)}, parameters and their gradients "
                f"{_gib(params)}, work buffers {_gib(work)}) but {self.limited_by} allows "
                f"{_gib(self.limit or 0)}; largest layers: {self.largest()}; {hint}")
