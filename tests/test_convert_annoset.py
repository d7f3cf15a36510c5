"""SSD's convert_annoset: VOC XML boxes and image files into AnnotatedDatum records."""
import os
import subprocess
import sys

import pytest

from netspec.datasets.lmdb_io import LMDBCursor
from netspec.proto import caffe_pb2

LABELS = 'item { name: "none_of_the_above" label: 0 } item { name: "cat" label: 1 } item { name: "dog" label: 2 }'
XML = """<annotation><size><width>200</width><height>100</height><depth>3</depth></size>
<object><name>dog</name><difficult>0</difficult><bndbox><xmin>20</xmin><ymin>10</ymin><xmax>120</xmax><ymax>60</ymax></bndbox></object>
<object><name>cat</name><difficult>1</difficult><bndbox><xmin>0</xmin><ymin>0</ymin><xmax>50</xmax><ymax>100</ymax></bndbox></object>
<object><name>dog</name><bndbox><xmin>100</xmin><ymin>50</ymin><xmax>200</xmax><ymax>100</ymax></bndbox></object>
</annotation>"""


def run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "netspec", *args], cwd=cwd, capture_output=True, text=True)


def make_set(tmp_path, xml=XML):
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "JPEGImages" / "a.jpg").write_bytes(b"\xff\xd8 not decoded by the converter")
    (tmp_path / "Annotations" / "a.xml").write_text(xml)
    (tmp_path / "list.txt").write_text("JPEGImages/a.jpg Annotations/a.xml\n")
    (tmp_path / "labelmap.prototxt").write_text(LABELS)


def test_voc_boxes_by_hand(tmp_path):
    make_set(tmp_path)
    done = run("convert_annoset", "--label_map_file=labelmap.prototxt", "--anno_type=detection",
               "--encode_type=jpg", ".", "list.txt", "trainval_lmdb", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Processed 1 files." in done.stdout
    with LMDBCursor(str(tmp_path / "trainval_lmdb")) as cursor:
        assert len(cursor) == 1
        record = caffe_pb2.AnnotatedDatum.FromString(cursor.next_values(1)[0])
    assert record.datum.encoded and record.datum.data.startswith(b"\xff\xd8") and record.type == record.BBOX
    dog, cat = record.annotation_group          # groups in order of first appearance
    assert (dog.group_label, cat.group_label) == (2, 1)
    b = dog.annotation[0].bbox
    assert [b.xmin, b.ymin, b.xmax, b.ymax] == pytest.approx([0.1, 0.1, 0.6, 0.6])
    assert [a.instance_id for a in dog.annotation] == [0, 1]
    b = dog.annotation[1].bbox
    assert [b.xmin, b.ymin, b.xmax, b.ymax, b.difficult] == pytest.approx([0.5, 0.5, 1, 1, False])
    assert cat.annotation[0].bbox.difficult and cat.annotation[0].bbox.xmax == pytest.approx(0.25)


def test_unknown_class_is_one_line(tmp_path):
    make_set(tmp_path, XML.replace("<name>cat</name>", "<name>cow</name>"))
    done = run("convert_annoset", "--label_map_file=labelmap.prototxt", ".", "list.txt", "db", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"netspec: error: {os.path.join('.', 'Annotations/a.xml')}: object 'cow' is not in the label map"]
    assert not (tmp_path / "db").exists()


def test_annoset_feeds_annotated_data(tmp_path):
    """convert_annoset's LMDB read back through AnnotatedData: the PNG decoded, the boxes as rows."""
    import io
    import numpy as np
    Image = pytest.importorskip("PIL.Image")
    from gradcheck import build
    from netspec.datasets.annoset import convert_annoset
    make_set(tmp_path)
    pixels = np.random.default_rng(0).integers(0, 256, (100, 200, 3)).astype(np.uint8)
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    (tmp_path / "JPEGImages" / "a.jpg").write_bytes(png.getvalue())
    convert_annoset(str(tmp_path), str(tmp_path / "list.txt"), str(tmp_path / "db"), str(tmp_path / "labelmap.prototxt"))
    layer, _, top = build(f'type: "AnnotatedData" data_param {{ source: "{tmp_path / "db"}" batch_size: 1 '
                          'backend: LMDB }', [], num_tops=2)
    try:
        layer.forward([], top)
        np.testing.assert_array_equal(top[0].data[0], pixels[..., ::-1].transpose(2, 0, 1))   # BGR, as Caffe
        np.testing.assert_allclose(top[1].data.reshape(-1, 8), [[0, 2, 0, .1, .1, .6, .6, 0], [0, 2, 1, .5, .5, 1, 1, 0],
                                                                [0, 1, 0, 0, 0, .25, 1, 1]], atol=1e-6)
    finally:
        layer.close()
