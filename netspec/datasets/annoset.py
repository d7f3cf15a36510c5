"""SSD's convert_annoset: images and their VOC XML box files into an LMDB of AnnotatedDatum records.

The list file has one `image annotation` pair per line, both relative to the root folder.
Each record holds the image file's own bytes (Datum.encoded) and its boxes normalised by
the XML's <size>, one AnnotationGroup per label (named through the LabelMap) in the order
labels first appear, instance ids counting within a group. Keys are `%08d_<image path>`.
"""
import os
import random
import xml.etree.ElementTree as ET

from ..errors import NetspecError
from ..proto import caffe_pb2
from ..reading import refuse_special
from .lmdb_io import write_lmdb_atomically


def label_map_names(path):
    """{name: label} of a LabelMap prototxt (SSD's labelmap_voc.prototxt)."""
    from ..schema import read_text_message
    return {item.name: item.label for item in read_text_message(path, caffe_pb2.LabelMap()).item}


def _number(node, tag, where):
    found = node.find(tag)
    try:
        return float(found.text)
    except (AttributeError, TypeError, ValueError):
        raise NetspecError(f"{where}: <{tag}> is missing or not a number") from None


def voc_annotation(path, names, record):
    """Fill `record` (an AnnotatedDatum) with the boxes of one VOC XML file (the fork's ReadXMLToAnnotatedDatum)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise NetspecError(f"{path}: cannot read the annotation ({e})") from None
    size = root.find("size")
    if size is None:
        raise NetspecError(f"{path}: no <size> element")
    width, height = _number(size, "width", path), _number(size, "height", path)
    if width <= 0 or height <= 0:
        raise NetspecError(f"{path}: <size> must be positive, got {width:g} x {height:g}")
    groups = {}
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in names:
            raise NetspecError(f"{path}: object '{name}' is not in the label map")
        label = names[name]
        if label not in groups:
            groups[label] = record.annotation_group.add(group_label=label)
        group = groups[label]
        box = obj.find("bndbox")
        if box is None:
            raise NetspecError(f"{path}: object '{name}' has no <bndbox>")
        x0, y0, x1, y1 = (_number(box, tag, path) for tag in ("xmin", "ymin", "xmax", "ymax"))
        if x0 > x1 or y0 > y1:
            raise NetspecError(f"{path}: object '{name}' has xmin > xmax or ymin > ymax")
        group.annotation.add(instance_id=len(group.annotation), bbox=caffe_pb2.NormalizedBBox(
            xmin=x0 / width, ymin=y0 / height, xmax=x1 / width, ymax=y1 / height,
            difficult=obj.findtext("difficult", "0").strip() == "1"))
    record.type = caffe_pb2.AnnotatedDatum.BBOX
    return record


def read_list(path):
    refuse_special(path, "a list file")
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.split() for line in f if line.strip()]
    except OSError as e:
        raise NetspecError(f"{path}: cannot read ({e.strerror})") from None
    for number, parts in enumerate(lines, 1):
        if len(parts) != 2:
            raise NetspecError(f"{path}:{number}: expected 'image annotation', got {' '.join(parts)!r}")
    return lines


def convert_annoset(root, list_file, db, label_map_file, shuffle=False, seed=0, overwrite=False):
    """Write the list's images and VOC boxes to a new LMDB at `db`; returns the number of records."""
    names = label_map_names(label_map_file)
    pairs = read_list(list_file)
    if shuffle:
        random.Random(seed).shuffle(pairs)

    def records():
        for index, (image, annotation) in enumerate(pairs):
            record = caffe_pb2.AnnotatedDatum()
            try:
                with open(os.path.join(root, image), "rb") as f:
                    record.datum.data = f.read()
            except OSError as e:
                raise NetspecError(f"{os.path.join(root, image)}: cannot read ({e.strerror})") from None
            record.datum.encoded, record.datum.label = True, -1
            voc_annotation(os.path.join(root, annotation), names, record)
            yield b"%08d_%s" % (index, image.encode()), record.SerializeToString()

    return write_lmdb_atomically(db, records(), overwrite=overwrite)
