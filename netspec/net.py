"""Net: a graph of layers over named blobs, with pycaffe's interface.

Construction follows Caffe's Net::Init: filter layers by phase/level/stage,
insert Splits, then create each layer, wire its bottoms and tops, run its
setup and reshape, attach parameters (sharing those with the same ParamSpec
name), and finally decide which layers need backward at all.
"""
import difflib
import gc
import os
from collections import OrderedDict

import numpy as np

from . import glog, hdf5, layers as _layers, threads  # noqa: F401  (importing layers fills the registry)
from .blob import BadBlobShape, Blob, BlobTooLarge
from .errors import NetspecError, prefixed
from .graph import filter_net, insert_splits
from .fusion import find_chains, find_epilogues
from .memory import MemoryEstimate, own_work_bytes, work_bytes
from .layers.base import LAYER_REGISTRY, check_blob_counts
from .proto import caffe_pb2
from .reuse import ReusePlan
from .schema import read_binary_message, read_net, write_binary_message
from .upgrade import upgrade_net
from .weight_file import open_weights
from .weights import blob_to_array, array_to_blob, copy_layer_blobs

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def _parse_phase(phase):
    if isinstance(phase, str):
        name = phase.upper()
        if name not in ("TRAIN", "TEST"):
            raise NetspecError(f"unknown phase '{phase}' (expected TRAIN or TEST)")
        return caffe_pb2.Phase.Value(name)
    if phase not in (TRAIN, TEST):
        raise NetspecError(f"unknown phase {phase!r} (expected netspec.TRAIN or netspec.TEST)")
    return int(phase)


def create_layer(layer_param):
    cls = LAYER_REGISTRY.get(layer_param.type)
    if cls is None:
        near = difflib.get_close_matches(layer_param.type, LAYER_REGISTRY, n=1)
        hint = f"did you mean '{near[0]}'?" if near else f"registered types: {', '.join(sorted(LAYER_REGISTRY))}"
        raise NetspecError(f"layer '{layer_param.name}': unknown layer type '{layer_param.type}' ({hint})")
    return cls(layer_param)


def _batch_slice(values, lo, batch):
    """values[lo:lo + batch], zero-padded to a full batch."""
    part = values[lo:lo + batch]
    if len(part) < batch:
        part = np.concatenate([part, np.zeros((batch - len(part),) + part.shape[1:], part.dtype)])
    return part


class LayerRecord:
    """One layer of a built Net: the layer, the blobs it reads and writes (and their names),
    the loss weight of each top that carries one, and whether backward runs through it and
    into each bottom. `forward()` and `backward()` run just this layer (timing, benchmarks)."""

    __slots__ = ("name", "layer", "bottoms", "tops", "bottom_names", "top_names", "loss_weights",
                 "need_backward", "bottom_need_backward")

    def __init__(self, name, layer, bottoms, tops, loss_weights, need_backward, bottom_need_backward,
                 bottom_names=None, top_names=None):
        self.name, self.layer = name, layer
        self.bottoms, self.tops = bottoms, tops
        self.bottom_names = list(layer.layer_param.bottom) if bottom_names is None else bottom_names
        self.top_names = list(layer.layer_param.top) if top_names is None else top_names
        self.loss_weights = loss_weights              # [(top blob, weight)] for the tops that carry a loss
        self.need_backward = need_backward
        self.bottom_need_backward = bottom_need_backward

    def forward(self):
        """Reshape to the bottoms' current shapes, then forward (Caffe's Layer::Forward)."""
        self.layer.reshape(self.bottoms, self.tops)
        self.layer.forward(self.bottoms, self.tops)

    def forward_with(self, epilogue):
        """forward, the convolution running `epilogue` (a fusion.Chain) on its top as it writes it;
        epilogue.applied says whether it did (else the chain's layers are still to run)."""
        epilogue.applied = False
        self.layer.epilogue = epilogue
        try:
            self.forward()
        finally:
            self.layer.epilogue = None

    def backward(self):
        """Gradients into the params and into each bottom that needs one (callers check need_backward)."""
        self.layer.backward(self.tops, self.bottom_need_backward, self.bottoms)


def _zero(a):
    a.fill(0)


class _Wiring:
    """What Net::Init tracks while it appends layers: blobs no layer has consumed yet (the
    outputs), which layer made each blob (for errors), which blobs carry a gradient, and the
    layer names so far with whether one of that name has parameters (dicts: setup stays linear)."""

    def __init__(self):
        self.available, self.producer, self.blob_need_backward = set(), {}, {}
        self.layer_has_params = {}
        self.memory = MemoryEstimate()


class Net:
    """pycaffe's caffe.Net: `Net(model, phase)`, `Net(model, weights, phase)`,
    `Net(model, phase, weights=...)`; `model` may also be a NetParameter.

    reuse_memory=True (netspec's own, for inference): when no layer runs backward, blobs that
    no later layer reads share buffers (reuse.py), so an intermediate's `data` after forward
    is not its value; the inputs, outputs and blobs asked of forward(blobs=...) are kept.
    A forward starting past the first layer gives every blob its own memory again."""

    def __init__(self, model, *args, phase=None, weights=None, level=0, stages=None, source=None,
                 reuse_memory=False):
        if len(args) == 2:
            weights, phase = args
        elif len(args) == 1:
            phase = args[0]
        elif args:
            raise TypeError("Net(model, phase) or Net(model, weights, phase)")
        if phase is None:
            raise TypeError("Net needs a phase: netspec.TRAIN or netspec.TEST")
        self.phase = _parse_phase(phase)
        threads.get_threads()     # settles the thread count and holds the BLAS to one thread, before any GEMM
        param = read_net(model)
        self.source = source or (os.fspath(model) if isinstance(model, (str, os.PathLike)) else None)
        state = caffe_pb2.NetState()
        state.CopyFrom(param.state)
        state.phase = self.phase
        if level:
            state.level = level
        for s in stages or ():
            state.stage.append(s)
        self._created = []               # every layer made, even one whose setup failed, for close()
        self._hooks = {"before_forward": [], "after_forward": [], "before_backward": [], "after_backward": []}
        collecting = gc.isenabled()
        gc.disable()                     # setup makes many objects and few cycles: the collector's
        try:                             # passes over them were a fifth of a large net's setup
            self._init(param, state)
        except NetspecError as e:
            self.close()                 # a Data layer set up before the error must not keep its thread
            raise self._located(e) from e
        except BaseException:
            self.close()
            raise
        finally:
            if collecting:
                gc.enable()
        if weights:
            self.copy_from(weights)
        self._chains = find_chains(self.records)     # BatchNorm/Scale/ReLU runs on one blob
        self._epilogues = find_epilogues(self.records)     # such runs right after a convolution
        # In training, each chain's backward as one pass too, found by its last record.
        self._backward_chains = {c.last: c for c in self._chains.values() if c.trains}
        self._reuse = None
        if reuse_memory and not any(record.need_backward for record in self.records):
            try:
                self._plan_reuse(())        # reshapes every layer again: errors name the file, as forward's do
            except NetspecError as e:
                raise self._located(e) from e

    def _plan_reuse(self, keep):
        if self._reuse is None:
            self._reuse = ReusePlan(self, keep)
            self._reuse.apply()
        else:
            self._reuse = self._reuse.replan(keep)

    def keep_blobs(self, names):
        """With reuse_memory: blobs (by name) a caller will read after forward keep their own memory
        (a new plan if any was shared). Without it, nothing to do."""
        plan = self._reuse
        if plan is None:
            return
        keep = set(plan.keep)
        if set(names) <= keep:
            return
        self._plan_reuse(keep | set(names))

    @property
    def reuses_memory(self):
        """Whether blobs share buffers now (Net(reuse_memory=True) and no forward from a later layer)."""
        return self._reuse is not None

    def close(self):
        """Release what layers hold outside Python's memory: prefetch threads, open LMDBs. Idempotent."""
        for layer in getattr(self, "_created", []):
            layer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _located(self, e):
        """The error with the net's file in front (once)."""
        if not self.source or str(e).startswith(f"{self.source}:"):
            return e
        return prefixed(e, self.source)

    # ------------------------------------------------------------ construction
    def _init(self, param, state):
        self.name = param.name
        self.debug_info = param.debug_info
        self.param = param
        filtered = insert_splits(filter_net(param, state))
        self.blobs = OrderedDict()
        self.records = []                # one LayerRecord per layer, in run order
        self.blob_loss_weights = OrderedDict()
        self.inputs = []
        self._learnable = []             # (Blob, lr_mult, decay_mult), owners only
        self._param_owner = {}           # ParamSpec name -> (layer name, index, Blob)
        wiring = _Wiring()
        for layer_param in filtered.layer:
            self.records.append(self._append_layer(layer_param, wiring, filtered, param, state))
        # Caffe keeps the unconsumed blobs in a std::set: outputs come in name order, and so do
        # the "net output #N" log lines and the columns log parsers make of them.
        self.outputs = sorted(wiring.available)
        self._prune_backward(filtered)
        for record in self.records:
            record.layer.runs_backward = record.need_backward
        self.layers = [record.layer for record in self.records]
        self.layer_dict = OrderedDict((record.name, record.layer) for record in self.records)
        self.bottom_names = OrderedDict((record.name, record.bottom_names) for record in self.records)
        self.top_names = OrderedDict((record.name, record.top_names) for record in self.records)
        mem = sum(b.count for b in self.blobs.values()) * 4
        glog.info(f"Memory required for data: {mem}", "net.cpp:255")

    def _append_layer(self, lp, wiring, filtered, param, state):
        """Caffe's Net::Init body for one layer: create, wire bottoms and tops, set up, attach params."""
        try:
            return self._append_layer_logged(lp, wiring, filtered, param, state, glog.info_enabled())
        finally:
            glog.flush()                  # the layer's lines, in one write (and before an error's line)

    def _append_layer_logged(self, lp, wiring, filtered, param, state, log):
        # `log`: whether INFO lines are written; the per-layer lines are not even built when not.
        # Each protobuf field is read once (every read of a upb field makes a new Python object).
        name, type_ = lp.name, lp.type
        bottom_names, top_names = list(lp.bottom), list(lp.top)
        if not lp.HasField("phase"):
            lp.phase = state.phase
        seen = name in wiring.layer_has_params
        if seen:
            # Caffe allows it (Caffe's own mnist_autoencoder has two 'loss' layers); weights are
            # matched by name, so it is refused below only for layers that carry parameters.
            glog.warning(f"duplicate layer name '{name}'", "net.cpp:90")
        if log:
            glog.info_later(f"Creating Layer {name}", "net.cpp:84")
        layer = create_layer(lp)
        self._created.append(layer)
        bottoms, bottom_need = self._append_bottoms(lp, bottom_names, wiring, filtered, param, state, log)
        tops, new_tops = self._append_tops(lp, bottom_names, top_names, wiring, log)
        if layer.is_loss and not tops:
            tops.append(Blob())           # Caffe's AutoTopBlobs: a loss without a top gets an anonymous one
            new_tops = tops
        check_blob_counts(layer, bottoms, tops)
        if log:
            glog.info_later(f"Setting up {name}", "net.cpp:129")
        try:
            layer.setup(bottoms, tops)
            layer.reshape(bottoms, tops)
        except BlobTooLarge as e:
            so_far = sum(b.count for b in self.blobs.values()) * 4
            if any(e.blob is t for t in tops):
                hint = "an output of the layer: it scales with batch_size and the input size"
            else:
                hint = "a parameter of the layer: a smaller num_output or kernel, not batch_size, is what helps"
            raise NetspecError(
                f"layer '{name}' ({type_}): {e}. Memory required for data up to "
                f"this layer: {so_far + e.needed // 2} bytes; the blob is {hint}"
                + (f"; the layers before it hold {wiring.memory.total / 2**30:.2f} GiB (largest layers: "
                   f"{wiring.memory.largest()})" if wiring.memory.total else "")) from None
        except BadBlobShape as e:
            raise NetspecError(f"layer '{name}' ({type_}): {e}") from None
        wiring.memory.add(name, type_, new_tops, layer.blobs, work_bytes(layer, bottoms, tops),
                          own_work_bytes(layer, bottoms, tops))
        wiring.memory.check()       # before the first forward touches (and so really takes) the memory
        loss_weights = self._set_loss_weights(layer, tops, top_names)
        if log:
            for blob in tops:
                glog.info_later(f"Top shape: {' '.join(map(str, blob.shape))} ({blob.count})", "net.cpp:139")
        need_backward = any(bottom_need) and not layer.is_data
        if layer.blobs:
            self._attach_params(layer, lp)
            specs = lp.param
            for j in range(len(layer.blobs)):
                need_backward |= (specs[j].lr_mult if j < len(specs) else 1.0) != 0   # ParamSpec's default
        elif lp.param:
            self._attach_params(layer, lp)            # says that param specs were given for no blob
        if seen and (layer.blobs or wiring.layer_has_params[name]):
            raise NetspecError(f"duplicate layer name '{name}': layers with parameters must have "
                               "unique names (weights are copied by layer name)")
        wiring.layer_has_params[name] = bool(layer.blobs) or wiring.layer_has_params.get(name, False)
        for top in top_names:
            wiring.blob_need_backward[top] = need_backward
        return LayerRecord(name, layer, bottoms, tops, loss_weights, need_backward, bottom_need,
                           bottom_names, top_names)

    def _append_bottoms(self, lp, bottom_names, wiring, filtered, param, state, log=True):
        """Caffe's AppendBottom for each bottom: (bottom blobs, whether each gets a gradient)."""
        bottoms, need = [], []
        blobs = self.blobs
        propagate_down = list(lp.propagate_down) if bottom_names else ()
        for j, name in enumerate(bottom_names):
            blob = blobs.get(name)
            if blob is None:
                raise self._missing_bottom(lp, name, filtered, param, state)
            if log:
                glog.info_later(f"{lp.name} <- {name}", "net.cpp:406")
            bottoms.append(blob)
            wiring.available.discard(name)
            ok = wiring.blob_need_backward.get(name, False)
            if j < len(propagate_down):
                ok = ok and propagate_down[j]
            need.append(ok)
        return bottoms, need

    def _append_tops(self, lp, bottom_names, top_names, wiring, log=True):
        """Caffe's AppendTop for each top: a new blob, or the bottom's own when in place.
        Returns (tops, the new ones among them)."""
        tops, new = [], []
        layer_name = lp.name if top_names else None
        is_input = top_names and lp.type == "Input"
        for j, name in enumerate(top_names):
            in_place = j < len(bottom_names) and bottom_names[j] == name
            if in_place:
                if log:
                    glog.info_later(f"{layer_name} -> {name} (in-place)", "net.cpp:410")
                tops.append(self.blobs[name])
            elif name in self.blobs:
                where = f"layer '{layer_name}' ({lp.type})"
                if top_names.count(name) > 1:
                    raise NetspecError(f"{where}: top blob '{name}' appears twice among its tops")
                raise NetspecError(f"{where}: top blob '{name}' is already produced by layer "
                                   f"'{wiring.producer[name]}' (only an in-place layer, with the blob as its "
                                   "bottom too, may write it again)")
            else:
                if log:
                    glog.info_later(f"{layer_name} -> {name}", "net.cpp:452")
                blob = Blob()
                self.blobs[name] = blob
                wiring.producer[name] = layer_name
                tops.append(blob)
                new.append(blob)
            wiring.available.add(name)
            if is_input:
                self.inputs.append(name)
        return tops, new

    def _missing_bottom(self, lp, name, filtered, param, state):
        where = f"layer '{lp.name}' ({lp.type})"
        done = {record.name for record in self.records} | {lp.name}
        later = [l.name for l in filtered.layer if name in l.top and l.name not in done]
        if later:
            return NetspecError(f"{where}: bottom blob '{name}' is produced only by the later layer '{later[0]}' "
                                "(layers run in file order; a blob must be produced before it is used)")
        kept = {l.name for l in filtered.layer}
        dropped = [l.name for l in param.layer if name in l.top and l.name not in kept]
        if dropped:
            return NetspecError(f"{where}: unknown bottom blob '{name}' (layer '{dropped[0]}' produces it but is "
                                f"not in the {caffe_pb2.Phase.Name(state.phase)} net: check its include/exclude "
                                "rules)")
        near = difflib.get_close_matches(name, list(self.blobs), n=1)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        return NetspecError(f"{where}: unknown bottom blob '{name}' (no earlier layer produces it{hint})")

    def _set_loss_weights(self, layer, tops, top_names):
        given = list(layer.layer_param.loss_weight)
        weights = []
        for j, blob in enumerate(tops):
            if j < len(given):
                w = given[j]
            else:
                w = 1.0 if (layer.is_loss and j == 0) else 0.0
            if w:
                # Any top may carry a loss: its loss is the weighted sum of its elements.
                blob.diff[...] = w
                weights.append((blob, w))
                glog.info(f"    with loss weight {w:g}", "net.cpp:148")
            if j < len(top_names):
                self.blob_loss_weights[top_names[j]] = w
        return weights

    def _attach_params(self, layer, lp):
        if len(lp.param) > len(layer.blobs):
            raise NetspecError(f"layer '{lp.name}' ({lp.type}): {len(lp.param)} param specs given but the layer "
                               f"has only {len(layer.blobs)} parameter blobs")
        for j, blob in enumerate(layer.blobs):
            spec = lp.param[j] if j < len(lp.param) else caffe_pb2.ParamSpec()
            owner = self._param_owner.get(spec.name) if spec.name else None
            if owner is None:
                if spec.name:
                    self._param_owner[spec.name] = (lp.name, j, blob)
                self._learnable.append((blob, spec.lr_mult, spec.decay_mult))
                continue
            owner_layer, owner_index, owner_blob = owner
            strict = spec.share_mode != caffe_pb2.ParamSpec.PERMISSIVE
            if (strict and owner_blob.shape != blob.shape) or owner_blob.count != blob.count:
                raise NetspecError(
                    f"layer '{lp.name}' ({lp.type}): cannot share param '{spec.name}' with layer '{owner_layer}': "
                    f"shape {blob.shape} here vs {owner_blob.shape} there")
            # Sharing: this layer's param becomes the owner's blob (data and diff).
            if owner_blob.shape != blob.shape:
                owner_blob_view = Blob()
                owner_blob_view.data = owner_blob.data.reshape(blob.shape)
                owner_blob_view.diff = owner_blob.diff.reshape(blob.shape)
                layer.blobs[j] = owner_blob_view
            else:
                layer.blobs[j] = owner_blob

    def _prune_backward(self, filtered):
        """Caffe's rule: no backward through layers that reach no loss, or whose
        tops need no gradient; then force_backward turns everything back on."""
        under_loss, skip = set(), set()
        for record in reversed(self.records):
            contributes = any(w for _, w in record.loss_weights) or any(t in under_loss for t in record.top_names)
            skip_down = all(t in skip for t in record.top_names) if record.top_names else True
            if record.need_backward and skip_down:
                record.need_backward = False
                record.bottom_need_backward = [False] * len(record.bottom_names)
            if not contributes:
                record.need_backward = False
            for j, name in enumerate(record.bottom_names):
                if contributes:
                    under_loss.add(name)
                else:
                    record.bottom_need_backward[j] = False
                if not record.bottom_need_backward[j]:
                    skip.add(name)
        if filtered.force_backward:
            for record in self.records:
                record.need_backward = True
                record.bottom_need_backward = [need or record.layer.allow_force_backward(j)
                                               for j, need in enumerate(record.bottom_need_backward)]

    # ------------------------------------------------------------ pycaffe API
    @property
    def params(self):
        return OrderedDict((record.name, record.layer.blobs) for record in self.records if record.layer.blobs)

    @property
    def learnable_params(self):
        """[(Blob, lr_mult, decay_mult)] for every parameter this net owns (shared ones once)."""
        return self._learnable

    @property
    def _blob_names(self):
        return list(self.blobs)

    @property
    def _layer_names(self):
        return [record.name for record in self.records]

    # pycaffe's index-based views of the C++ Net (some scripts reach for them).
    @property
    def _blobs(self):
        return list(self.blobs.values())

    @property
    def _inputs(self):
        return [self._blob_names.index(name) for name in self.inputs]

    @property
    def _outputs(self):
        return [self._blob_names.index(name) for name in self.outputs]

    @property
    def _blob_loss_weights(self):
        return [self.blob_loss_weights.get(name, 0.0) for name in self.blobs]

    def _bottom_ids(self, i):
        return [self._blob_names.index(name) for name in self.records[i].bottom_names]

    def _top_ids(self, i):
        return [self._blob_names.index(name) for name in self.records[i].top_names]

    def _forward(self, start, end):
        return self.forward_prefilled(start, end)

    def _backward(self, start, end):
        self.backward_from_to(start, end)

    # Per-index views of the records' backward flags (read-only).
    @property
    def _layer_need_backward(self):
        return [record.need_backward for record in self.records]

    @property
    def _bottom_need_backward(self):
        return [list(record.bottom_need_backward) for record in self.records]

    def _layer_index(self, name, default):
        if name is None:
            return default
        try:
            return self._layer_names.index(name)
        except ValueError:
            raise NetspecError(f"no layer named '{name}' in net '{self.name}'") from None

    def forward_prefilled(self, start=0, end=None):
        """Run layers start..end (indices); return the weighted loss."""
        end = len(self.records) - 1 if end is None else end
        if start and self._reuse is not None:
            # The bottoms of layer `start` may hold what later layers wrote last time: back to
            # memory of their own (holding what they hold now, e.g. a value the caller set).
            self._reuse.release()
            self._reuse = None
        loss = 0.0
        try:
            before, after = self._hooks["before_forward"], self._hooks["after_forward"]
            # Chains (fusion.py) run as one pass unless hooks or debug output want each layer.
            fuse = not (before or after or self.debug_info)
            chains, epilogues = (self._chains, self._epilogues) if fuse else ({}, {})
            i = start
            while i <= end:
                chain = chains.get(i)
                if chain is not None and chain.last <= end and chain.run():
                    i = chain.last + 1
                    continue
                for hook in before:
                    hook(i)
                record = self.records[i]
                last = i        # the last record this step runs: past a convolution's epilogue, if it ran
                epilogue = epilogues.get(i)
                if epilogue is not None and epilogue.last <= end:
                    record.forward_with(epilogue)
                    last = epilogue.last if epilogue.applied else i
                else:
                    record.forward()
                for blob, w in record.loss_weights:
                    blob.diff[...] = w
                    loss += w * float(blob.data.sum(dtype=np.float64))
                if self.debug_info:
                    self._debug(record, "Forward")
                for hook in after:
                    hook(i)
                i = last + 1
        except NetspecError as e:
            raise self._located(e) from e
        return loss

    def backward_from_to(self, start=None, end=0):
        start = len(self.records) - 1 if start is None else start
        try:
            before, after = self._hooks["before_backward"], self._hooks["after_backward"]
            chains = {} if before or after or self.debug_info else self._backward_chains
            i = start
            while i >= end:
                chain = chains.get(i)
                if chain is not None and chain.first >= end and chain.backward():
                    i = chain.first - 1
                    continue
                for hook in before:
                    hook(i)
                record = self.records[i]
                if record.need_backward:
                    record.backward()
                    if self.debug_info:
                        self._debug(record, "Backward")
                for hook in after:
                    hook(i)
                i -= 1
        except NetspecError as e:
            raise self._located(e) from e

    # pycaffe's Net callbacks: `fn(layer_index)` around every layer's forward or backward, as Caffe
    # calls them (backward ones for every layer in the range, whether or not it runs backward).
    def before_forward(self, fn):
        self._hooks["before_forward"].append(fn)

    def after_forward(self, fn):
        self._hooks["after_forward"].append(fn)

    def before_backward(self, fn):
        self._hooks["before_backward"].append(fn)

    def after_backward(self, fn):
        self._hooks["after_backward"].append(fn)

    def _debug(self, record, direction):
        """Caffe's debug_info lines: mean absolute value of each blob a layer touched."""
        name, layer = record.name, record.layer
        mean_abs = lambda a: float(np.abs(a).mean()) if a.size else 0.0  # noqa: E731
        if direction == "Forward":
            for top_name, blob in zip(record.top_names, record.tops):
                glog.info(f"    [Forward] Layer {name}, top blob {top_name} data: {mean_abs(blob.data):g}",
                          "net.cpp:604")
            for j, blob in enumerate(layer.blobs):
                glog.info(f"    [Forward] Layer {name}, param blob {j} data: {mean_abs(blob.data):g}",
                          "net.cpp:616")
        else:
            for bottom_name, blob, need in zip(record.bottom_names, record.bottoms, record.bottom_need_backward):
                if need:
                    glog.info(f"    [Backward] Layer {name}, bottom blob {bottom_name} diff: "
                              f"{mean_abs(blob.diff):g}", "net.cpp:632")
            for j, blob in enumerate(layer.blobs):
                glog.info(f"    [Backward] Layer {name}, param blob {j} diff: {mean_abs(blob.diff):g}",
                          "net.cpp:643")

    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """pycaffe's forward: set inputs from kwargs, run, return {output: data}."""
        for name, value in kwargs.items():
            if name not in self.blobs:
                raise NetspecError(f"forward: net '{self.name}' has no blob named '{name}'")
            target = self.blobs[name]
            value = np.asarray(value)
            if value.shape != target.shape:
                if value.ndim and target.data.ndim and value.shape[0] != target.shape[0]:
                    raise NetspecError(f"forward: input '{name}' is not batch sized: got shape "
                                       f"{value.shape}, net expects {target.shape}")
                raise NetspecError(f"forward: input '{name}' has shape {value.shape}, "
                                   f"net expects {target.shape}")
            target.data[...] = value
        i0 = self._layer_index(start, 0)
        i1 = self._layer_index(end, len(self.records) - 1)
        wanted = list(blobs or [])
        if wanted:
            self.keep_blobs([name for name in wanted if name in self.blobs])
        self.forward_prefilled(i0, i1)
        names = ([self.top_names[end][0]] if end is not None else self.outputs) + wanted
        return {name: self.blobs[name].data for name in names}

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """pycaffe's backward: set top diffs from kwargs, run, return {input: diff}."""
        for name, value in kwargs.items():
            if name not in self.blobs:
                raise NetspecError(f"backward: net '{self.name}' has no blob named '{name}'")
            target = self.blobs[name]
            value = np.asarray(value)
            if value.shape != target.shape:
                raise NetspecError(f"backward: diff for '{name}' has shape {value.shape}, "
                                   f"blob has {target.shape}")
            target.diff[...] = value
        i0 = self._layer_index(start, len(self.records) - 1)
        i1 = self._layer_index(end, 0)
        self.backward_from_to(i0, i1)
        names = ([self.bottom_names[end][0]] if end is not None and self.bottom_names[end] else self.inputs)
        names = names + list(diffs or [])
        return {name: self.blobs[name].diff for name in names}

    def forward_backward(self):
        """One training pass: forward everything, backward everything; returns the loss."""
        loss = self.forward_prefilled()
        self.backward_from_to()
        return loss

    def first_non_finite(self):
        """Where a NaN/inf first shows: the earliest layer output, else the earliest gradient in backward order."""
        for record in self.records:
            for top_name, blob in zip(record.top_names, record.tops):
                if not np.all(np.isfinite(blob.data)):
                    return f"first non-finite value in the output '{top_name}' of layer '{record.name}'"
            for j, blob in enumerate(record.layer.blobs):
                if not np.all(np.isfinite(blob.data)):
                    return f"first non-finite value in param {j} of layer '{record.name}'"
        for record in reversed(self.records):
            for blob in list(record.bottoms) + list(record.layer.blobs):
                if not np.all(np.isfinite(blob.diff)):
                    return f"first non-finite gradient in backward of layer '{record.name}'"
        return "no non-finite value found in the net's blobs"

    def _set_input_arrays(self, data, labels):
        self.set_input_arrays(data, labels)

    def set_input_arrays(self, data, labels):
        """pycaffe: hand arrays to the net's first layer, which must be a MemoryData layer."""
        if not self.layers or self.layers[0].type != "MemoryData":
            raise NetspecError("set_input_arrays: the net's first layer is not a MemoryData layer")
        self.layers[0].reset(data, labels)

    def clear_param_diffs(self):
        for blob, _, _ in self._learnable:
            threads.parallel_flat(_zero, blob.diff)

    def reshape(self):
        self._reshape_layers()

    def _reshape_layers(self):
        for record in self.records:
            record.layer.reshape(record.bottoms, record.tops)

    def forward_all(self, blobs=None, **kwargs):
        """Forward inputs of any length in batches of the net's batch size; concatenated outputs."""
        outputs = list(self.outputs) + list(blobs or [])
        collected = {name: [] for name in outputs}
        n = len(next(iter(kwargs.values()))) if kwargs else 0
        batch = self.blobs[next(iter(kwargs))].shape[0] if kwargs else 1
        for lo in range(0, n, batch):
            chunk = {name: _batch_slice(np.asarray(value), lo, batch) for name, value in kwargs.items()}
            out = self.forward(blobs=blobs, **chunk)
            for name in outputs:
                value = out[name].copy()
                if value.ndim == 0:
                    collected[name].append(value)       # a loss: one value per batch
                else:
                    collected[name].extend(value[:min(batch, n - lo)])
        return {name: np.asarray(v) for name, v in collected.items()}

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs):
        """pycaffe's forward_backward_all: inputs (by input name) and top diffs (by output name) of any
        length, run in batches of the net's batch size; returns ({output: data}, {input: diff}).

        The last batch is padded with zeros and the padding dropped from the results.
        """
        forward_in = {k: np.asarray(v) for k, v in kwargs.items() if k not in self.outputs}
        backward_in = {k: np.asarray(v) for k, v in kwargs.items() if k in self.outputs}
        out_names = list(dict.fromkeys(self.outputs + list(blobs or [])))
        diff_names = list(dict.fromkeys(self.inputs + list(diffs or [])))
        outs = {name: [] for name in out_names}
        grads = {name: [] for name in diff_names}
        given = {**forward_in, **backward_in}
        if given:
            n, batch = len(next(iter(given.values()))), self.blobs[next(iter(given))].shape[0]
        else:                            # nothing to feed (a data layer fills the net): one pass
            n = batch = None
        for lo in range(0, n or 1, batch or 1):
            keep = min(batch, n - lo) if n else None
            fwd = {k: _batch_slice(v, lo, batch) for k, v in forward_in.items()}
            bwd = {k: _batch_slice(v, lo, batch) for k, v in backward_in.items()}
            for collected, result in ((outs, self.forward(blobs=blobs, **fwd)),
                                      (grads, self.backward(diffs=diffs, **bwd))):
                for name, value in result.items():
                    collected[name].extend([value.copy()] if value.ndim == 0 else value[:keep].copy())
        return ({k: np.asarray(v) for k, v in outs.items()}, {k: np.asarray(v) for k, v in grads.items()})

    # ------------------------------------------------------------ weights
    def to_proto(self, write_diff=False):
        """The net as a NetParameter carrying every layer's blobs (a .caffemodel)."""
        out = caffe_pb2.NetParameter()
        out.name = self.name
        for layer in self.layers:
            lp = out.layer.add()
            lp.CopyFrom(layer.layer_param)
            del lp.blobs[:]
            for blob in layer.blobs:
                array_to_blob(blob.data, lp.blobs.add(), blob.diff if write_diff else None)
        return out

    def save(self, path, write_diff=False):
        write_binary_message(path, self.to_proto(write_diff))

    def save_hdf5(self, path, write_diff=False):
        """pycaffe's save_hdf5: Caffe's .caffemodel.h5 layout (data/<layer>/<i>)."""
        hdf5.save_net(self, path, write_diff)

    def load_hdf5(self, path):
        """pycaffe's load_hdf5: copy parameters by layer name from a .caffemodel.h5."""
        hdf5.copy_trained_layers(self, path)

    def copy_from(self, source, require_all=False):
        """Copy parameters by layer name from a .caffemodel (binary or HDF5) path or a NetParameter
        (see copy_layer_blobs)."""
        if isinstance(source, caffe_pb2.NetParameter):
            trained, where = source, "<NetParameter>"
        else:
            where = str(source)
            if where.endswith((".solverstate", ".solverstate.h5")):
                raise NetspecError(f"{where}: --weights takes a .caffemodel file; a .solverstate holds the solver's "
                                   "history (use --snapshot to resume from it)")
            if hdf5.is_hdf5(where):          # Caffe tells the two formats apart by content, not by name
                return hdf5.copy_trained_layers(self, where, require_all)
            stored = open_weights(where)     # the floats read from the file into our arrays: no copies
            if stored is not None:
                with stored:
                    return copy_layer_blobs(self, stored, where, require_all)
            trained = read_binary_message(where, caffe_pb2.NetParameter())
            trained = upgrade_net(trained, where)
        copy_layer_blobs(self, trained, where, require_all)

    copy_trained_layers_from = copy_from

    def share_with(self, other):
        """Make this net's parameters the same blobs as `other`'s (train/test nets), by layer name."""
        for record in self.records:
            name, layer = record.name, record.layer
            source = other.layer_dict.get(name)
            if source is None or not layer.blobs:
                continue
            for j, blob in enumerate(layer.blobs):
                if j >= len(source.blobs) or source.blobs[j].shape != blob.shape:
                    theirs = source.blobs[j].shape if j < len(source.blobs) else None
                    raise NetspecError(f"layer '{name}': cannot share param {j} between nets: shape "
                                       f"{blob.shape} vs {theirs}")
                layer.blobs[j] = source.blobs[j]
