"""Turning a NetParameter into the list of layers a Net runs.

Two rewrites come before a net is built, as in Caffe: `filter_net` keeps the
layers whose include/exclude rules match the NetState, and `insert_splits`
adds a Split layer wherever one blob feeds several layers, so that each layer
can overwrite its bottom diffs and the Split sums them.
"""
from .errors import NetspecError
from .proto import caffe_pb2


def state_meets_rule(state, rule):
    """Caffe's StateMeetsRule: phase, level range, required and forbidden stages."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def layer_included(layer, state):
    if layer.include and layer.exclude:
        raise NetspecError(f"layer '{layer.name}' ({layer.type}): specify either include rules or "
                           "exclude rules, not both")
    if layer.include:
        return any(state_meets_rule(state, r) for r in layer.include)
    return not any(state_meets_rule(state, r) for r in layer.exclude)


def filter_net(net_param, state):
    """A copy of `net_param` holding only the layers that `state` includes."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    kept = [layer_included(layer, state) for layer in net_param.layer]
    if all(kept):
        return out                # the common case: one copy of the whole message, in C
    del out.layer[:]
    for layer, keep in zip(net_param.layer, kept):
        if keep:
            out.layer.add().CopyFrom(layer)
    return out


def split_layer_name(blob, layer, top_index):
    return f"{blob}_{layer}_{top_index}_split"


def split_blob_name(blob, layer, top_index, split_index):
    return f"{blob}_{layer}_{top_index}_split_{split_index}"


def insert_splits(net_param):
    """Caffe's InsertSplits: a Split layer after every top consumed more than once.

    A top with a nonzero loss weight that is also consumed counts as one more
    consumer; the Split's first top then carries that loss weight.
    """
    producer = {}                 # blob name -> (layer index, top index) of its latest producer
    consumers = {}                # (layer index, top index) -> number of consumers
    loss_weight = {}
    bottom_source = {}            # (layer index, bottom index) -> (producer layer, top index)
    for i, layer in enumerate(net_param.layer):
        for j, name in enumerate(layer.bottom):
            src = producer.get(name)
            if src is None:
                continue          # reported as a missing bottom when the net is built
            bottom_source[(i, j)] = src
            consumers[src] = consumers.get(src, 0) + 1
        weights = layer.loss_weight
        weights = list(weights) if weights else ()
        for j, name in enumerate(layer.top):
            producer[name] = (i, j)
            w = weights[j] if j < len(weights) else 0.0
            if w:
                loss_weight[(i, j)] = w
                consumers[(i, j)] = consumers.get((i, j), 0) + 1
    if all(n <= 1 for n in consumers.values()):
        return net_param

    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    del out.layer[:]
    next_split = {}               # (layer, top) -> next split output to hand out
    for i, layer in enumerate(net_param.layer):
        new = out.layer.add()
        new.CopyFrom(layer)
        for j, name in enumerate(layer.bottom):
            src = bottom_source.get((i, j))
            if src and consumers[src] > 1:
                k = next_split.get(src, 0)
                next_split[src] = k + 1
                src_layer = net_param.layer[src[0]]
                new.bottom[j] = split_blob_name(name, src_layer.name, src[1], k)
        for j, name in enumerate(layer.top):
            n = consumers.get((i, j), 0)
            if n <= 1:
                continue
            split = out.layer.add()
            split.name = split_layer_name(name, layer.name, j)
            split.type = "Split"
            split.bottom.append(name)
            for k in range(n):
                split.top.append(split_blob_name(name, layer.name, j, k))
            w = loss_weight.get((i, j), 0.0)
            if w:
                # The loss moves to the Split's first top, which nothing consumes.
                del new.loss_weight[:]
                split.loss_weight.append(w)
                split.loss_weight.extend([0.0] * (n - 1))
                next_split[(i, j)] = 1
    return out
