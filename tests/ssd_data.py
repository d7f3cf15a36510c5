"""Tiny AnnotatedDatum LMDBs for the SSD tests: boxes of flat colour on a noisy background."""
import numpy as np

from netspec.datasets.lmdb_io import array_to_datum, write_lmdb_atomically
from netspec.proto import caffe_pb2

# (label, xmin, ymin, xmax, ymax, difficult) per image
BOXES = [
    [(1, .1, .1, .5, .6, False), (2, .6, .5, .95, .9, False)],
    [(2, .2, .3, .7, .8, False)],
    [(1, .05, .5, .4, .95, True), (1, .55, .1, .9, .45, False)],
    [(2, .3, .05, .65, .4, False)],
]
COLOURS = {1: (40, 200, 40), 2: (200, 40, 200)}


def annotated_datum(image, boxes, typed=True):
    """An AnnotatedDatum of an (H, W, 3) uint8 image and its (label, box..., difficult) boxes, one group per label."""
    record = caffe_pb2.AnnotatedDatum()
    record.datum.CopyFrom(array_to_datum(image.transpose(2, 0, 1), label=boxes[0][0] if boxes else 0))
    if typed:
        record.type = caffe_pb2.AnnotatedDatum.BBOX
    for label in sorted({b[0] for b in boxes}):
        group = record.annotation_group.add(group_label=label)
        for instance, (_, x0, y0, x1, y1, difficult) in enumerate(b for b in boxes if b[0] == label):
            group.annotation.add(instance_id=instance, bbox=caffe_pb2.NormalizedBBox(
                xmin=x0, ymin=y0, xmax=x1, ymax=y1, difficult=difficult))
    return record


def draw(boxes, height, width, rng):
    image = rng.integers(90, 140, (height, width, 3)).astype(np.uint8)
    for label, x0, y0, x1, y1, _ in boxes:
        image[int(y0 * height):int(y1 * height), int(x0 * width):int(x1 * width)] = COLOURS[label]
    return image


def write_annotated_lmdb(path, height=48, width=64, boxes=BOXES, typed=True, seed=0):
    rng = np.random.default_rng(seed)
    records = [(b"%08d" % i, annotated_datum(draw(b, height, width, rng), b, typed).SerializeToString())
               for i, b in enumerate(boxes)]
    write_lmdb_atomically(path, records)
    return path
