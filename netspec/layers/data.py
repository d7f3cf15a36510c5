"""Layers that bring data into a net: Input, DummyData (Data, MemoryData, ImageData below)."""
from ..fillers import fill
from ..proto import caffe_pb2
from .base import Layer, register


@register("Input")
class Input(Layer):
    """Tops of fixed shape that the caller fills (pycaffe's `net.blobs['data'].data[...] = x`)."""
    num_bottoms = 0
    is_data = True

    def setup(self, bottom, top):
        shapes = self.layer_param.input_param.shape
        if len(shapes) not in (1, len(top)):
            raise self.error(f"input_param has {len(shapes)} shapes for {len(top)} tops (give 1 or one per top)")
        for i, t in enumerate(top):
            t.reshape(tuple(shapes[0 if len(shapes) == 1 else i].dim))

    def forward(self, bottom, top):
        pass


@register("DummyData")
class DummyData(Layer):
    """Tops filled by fillers (constant 0 by default); refilled each forward unless constant."""
    num_bottoms = 0
    is_data = True

    def setup(self, bottom, top):
        p = self.layer_param.dummy_data_param
        if p.shape:
            shapes = [tuple(s.dim) for s in p.shape]
        else:
            legacy = [p.num, p.channels, p.height, p.width]
            shapes = [tuple(int(field[i if len(field) > 1 else 0]) for field in legacy) for i in range(len(p.num))]
        if len(shapes) not in (1, len(top)):
            raise self.error(f"dummy_data_param has {len(shapes)} shapes for {len(top)} tops")
        fillers = list(p.data_filler) or [caffe_pb2.FillerParameter(type="constant", value=0)]
        if len(fillers) not in (1, len(top)):
            raise self.error(f"dummy_data_param has {len(fillers)} data_fillers for {len(top)} tops")
        self.shapes = [shapes[0 if len(shapes) == 1 else i] for i in range(len(top))]
        self.fillers = [fillers[0 if len(fillers) == 1 else i] for i in range(len(top))]
        # Constant fillers are applied once; random ones refresh every forward (Caffe's refill_).
        self.refill = [f.type != "constant" for f in self.fillers]
        for t, shape, f in zip(top, self.shapes, self.fillers):
            t.reshape(shape)
            fill(f, t.data)

    def reshape(self, bottom, top):
        for t, shape in zip(top, self.shapes):
            t.reshape(shape)

    def forward(self, bottom, top):
        for t, f, refill in zip(top, self.fillers, self.refill):
            if refill:
                fill(f, t.data)
