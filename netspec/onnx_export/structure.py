"""Blob plumbing: Concat, Slice, Flatten, Reshape, Crop, Tile, Parameter.

(Split needs no node: its tops are the bottom's value. Silence writes nothing.)
Reshapes use the target shape netspec computed, so Caffe's 0 (copy) and -1 (infer) with
axis/num_axes are already resolved; with --dynamic-batch the one dimension that follows the
batch becomes -1.
"""
from .registry import exports


@exports("Concat")
def concat(g, layer, bottoms, tops):
    if len(bottoms) == 1:
        g.identity(bottoms[0].name, tops[0].name)
    else:
        g.node("Concat", [b.name for b in bottoms], [tops[0].name], axis=int(layer.axis))


@exports("Slice")
def slice_(g, layer, bottoms, tops):
    if len(tops) == 1:
        g.identity(bottoms[0].name, tops[0].name)
        return
    sizes = [b - a for a, b in layer.bounds]
    g.node("Split", [bottoms[0].name, g.ints(sizes)], [t.name for t in tops], axis=int(layer.axis))


@exports("Flatten", "Reshape")
def reshape(g, layer, bottoms, tops):
    g.reshape(bottoms[0].name, tops[0].dims, tops[0].name)


@exports("Crop")
def crop(g, layer, bottoms, tops):
    """bottom[0] cut at the offsets to bottom[1]'s size on every axis from `axis` (one Slice)."""
    x, y = bottoms[0], tops[0]
    axes, starts, ends = [], [], []
    for i, window in enumerate(layer.window):
        if window == slice(None):
            continue
        if x.dims[i] is None or y.dims[i] is None:
            if window.start == 0 and x.dims[i] is None and y.dims[i] is None:
                continue            # both follow the batch: nothing to cut
            raise g.refuse(f"--dynamic-batch: crops axis {i}, which follows the batch size")
        if (window.start, window.stop) == (0, x.shape[i]):
            continue
        axes.append(i)
        starts.append(window.start)
        ends.append(window.stop)
    if not axes:
        g.identity(x.name, y.name)
        return
    g.node("Slice", [x.name, g.ints(starts), g.ints(ends), g.ints(axes)], [y.name])


@exports("Tile")
def tile(g, layer, bottoms, tops):
    """Caffe repeats the block of axes >= axis along axis: ONNX Tile with one repeat count there."""
    x = bottoms[0]
    axis = layer.canonical_axis(layer.layer_param.tile_param.axis, x.shape)
    repeats = [1] * len(x.shape)
    repeats[axis] = layer.tiles
    g.node("Tile", [x.name, g.ints(repeats)], [tops[0].name])


@exports("Parameter")
def parameter(g, layer, bottoms, tops):
    g.identity(g.const(layer.blobs[0].data, f"{layer.name}/param"), tops[0].name)
