"""SSD's AnnotatedData: images and their boxes from an LMDB of AnnotatedDatum records."""
import os

import numpy as np

from ..datasets.annotated import AnnotatedTransformer, parse_annotated
from ..datasets.db import SHOWN, backend_name, open_cursor
from ..errors import NetspecError
from ..proto import caffe_pb2
from ..rng import get_rng
from .base import register
from .data import Data, _Prefetcher, decoded_color

BBOX = caffe_pb2.AnnotatedDatum.BBOX


@register("AnnotatedData")
class AnnotatedData(Data):
    """Batches of augmented images and (1, 1, G, 8) box rows [item, label, instance, xmin, ymin,
    xmax, ymax, difficult] (one row of -1 when the batch has no box). Records without an
    annotation type (and no annotated_data_param.anno_type) give their Datum label instead.

    Reading, prefetching, resume and MPI striding are the Data layer's; the per-image steps
    are netspec/datasets/annotated.py (distort, expand, batch_sampler crop, resize, crop, mirror).
    """

    def setup(self, bottom, top):
        p, anno = self.layer_param.data_param, self.layer_param.annotated_data_param
        if p.batch_size <= 0:
            raise self.error("data_param batch_size must be positive")
        if not p.source or not os.path.exists(p.source):
            raise self.error(f"{SHOWN[backend_name(p.backend)]} '{p.source}' does not exist (data_param.source is "
                             "relative to the working directory)")
        self.batch_size = p.batch_size
        self.color = decoded_color(self)
        try:
            self.cursor = open_cursor(p.source, p.backend)
            image, _, kind, _ = parse_annotated(self.cursor.peek(), f"{p.source} record 0", self.color)
        except NetspecError as e:
            raise self.error(str(e)) from None
        self.anno_type = kind if kind is not None else (anno.anno_type if anno.HasField("anno_type") else None)
        if self.anno_type not in (None, BBOX):
            raise self.error(f"annotation type {self.anno_type} is not supported (BBOX is)")
        self.transformer = AnnotatedTransformer(self.layer_param.transform_param, anno.batch_sampler,
                                                self.phase == caffe_pb2.TRAIN, int(get_rng().integers(2 ** 63)),
                                                f"layer '{self.name}' ({self.type})")
        h, w = self.transformer.output_hw(*image.shape[:2])
        self.out_shape = (self.batch_size, image.shape[2], h, w)
        self.has_label = len(top) > 1
        self._labels_shape = (1, 1, 1, 8) if self.anno_type is not None else (self.batch_size,)
        self._consumed = self._state()
        self._prefetcher = _Prefetcher(self._next_batch, p.prefetch)

    def _next_batch(self):
        src = self.layer_param.data_param.source
        start, stride = self.cursor.position, self._stride
        images = np.empty(self.out_shape, np.float32)
        rows, labels = [], []
        for i, value in enumerate(self._read_values()):
            where = f"{src} record {(start + i * stride) % len(self.cursor)}"
            try:
                image, groups, _, label = parse_annotated(value, where, self.color)
                image, groups = self.transformer(image, groups)
            except NetspecError as e:
                raise self.error(str(e)) from None
            if image.shape != self.out_shape[1:]:
                raise self.error(f"{where} gives a {image.shape} image, the batch is {self.out_shape[1:]} "
                                 "(give transform_param.resize_param to make every image the same size)")
            images[i] = image
            labels.append(label)
            rows += [[i, group, instance, *box, difficult] for group, annotations in groups
                     for instance, box, difficult in annotations]
        if self.anno_type is None:
            return images, np.array(labels, np.float32), self._state()
        boxes = np.array(rows, np.float32).reshape(1, 1, -1, 8) if rows else np.full((1, 1, 1, 8), -1, np.float32)
        return images, boxes, self._state()

    def reshape(self, bottom, top):
        top[0].reshape(self.out_shape)
        if self.has_label:
            top[1].reshape(self._labels_shape)

    def forward(self, bottom, top):
        images, labels, state = self._prefetcher.get()
        top[0].data[...] = images
        if self.has_label:
            self._labels_shape = labels.shape
            top[1].reshape(labels.shape)
            top[1].data[...] = labels
        self._consumed = state
