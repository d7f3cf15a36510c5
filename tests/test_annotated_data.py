"""SSD's AnnotatedData layer and its augmentation steps."""
import numpy as np
import pytest
from google.protobuf import text_format

from gradcheck import build
from netspec.datasets import annotated as A
from netspec.errors import NetspecError
from netspec.proto import caffe_pb2
from ssd_data import BOXES, write_annotated_lmdb

B = np.array


def test_project_by_hand():
    window = B([.5, 0, 1, 1], np.float32)
    np.testing.assert_allclose(A.project(window, B([.6, .2, .8, .4])), [.2, .2, .6, .4], atol=1e-6)
    np.testing.assert_allclose(A.project(window, B([.4, .2, .8, .4])), [0, .2, .6, .4], atol=1e-6)   # clipped
    assert A.project(window, B([.1, .2, .5, .4])) is None                                           # outside


def test_emit_constraint_and_mirror():
    center = caffe_pb2.EmitConstraint(emit_type=caffe_pb2.EmitConstraint.CENTER)
    window = B([.5, 0, 1, 1], np.float32)
    groups = [(1, [(0, B([.4, .2, .8, .4], np.float32), False), (1, B([.2, .2, .7, .4], np.float32), True)])]
    moved = A.move_boxes(groups, window, center)      # the second box's centre (0.45) is outside
    assert len(moved[0][1]) == 1 and moved[0][1][0][0] == 0
    moved = A.move_boxes(groups, window, None, mirror=True)
    np.testing.assert_allclose(moved[0][1][1][1], [1 - .4, .2, 1 - 0, .4], atol=1e-6)
    assert moved[0][1][1][2] is True
    overlap = caffe_pb2.EmitConstraint(emit_type=caffe_pb2.EmitConstraint.MIN_OVERLAP, emit_overlap=0.5)
    assert len(A.move_boxes(groups, window, overlap)[0][1]) == 1     # coverage 0.75 and 0.4
    assert A.move_boxes(groups, B([0, .6, 1, 1], np.float32), None) == []    # empty groups are dropped


def test_crop_and_expand_by_hand():
    image = (np.arange(10 * 20) + 10).astype(np.uint8).reshape(10, 20, 1)      # no pixel is 7
    groups = [(1, [(0, B([.5, .5, 1, 1], np.float32), False)])]
    out, moved = A.crop(image, groups, B([.5, 0, 1, .5], np.float32), None)
    assert out.shape == (5, 10, 1) and out[0, 0, 0] == image[0, 10, 0]
    assert moved == []                                  # the box only touches the window
    rng = np.random.default_rng(0)
    p = caffe_pb2.ExpansionParameter(prob=1, max_expand_ratio=3)
    out, moved = A.expand(image, groups, p, 7, rng, None)
    h, w = out.shape[:2]
    assert h >= 10 and w >= 20 and (out == 7).sum() == h * w - 200
    top, left = np.argwhere(out[..., 0] == image[0, 0, 0])[0]
    box = moved[0][1][0][1]
    np.testing.assert_allclose(box, [(left + 10) / w, (top + 5) / h, (left + 20) / w, (top + 10) / h], atol=1e-5)


def test_samplers_meet_their_constraints():
    rng = np.random.default_rng(1)
    objects = B([[.1, .1, .5, .6]], np.float32)
    sampler = text_format.Parse('sampler { min_scale: 0.3 max_scale: 1 min_aspect_ratio: 0.5 max_aspect_ratio: 2 } '
                                'sample_constraint { min_jaccard_overlap: 0.5 } max_sample: 1 max_trials: 50',
                                caffe_pb2.BatchSampler())
    groups = [(1, [(0, objects[0], False)])]
    windows = A.sample_windows(groups, [caffe_pb2.BatchSampler(max_sample=1, max_trials=1), sampler] * 20, rng)
    assert any((w == [0, 0, 1, 1]).all() for w in windows)
    for w in windows:
        assert (w >= 0).all() and (w <= 1).all()
        s = min(w[2] - w[0], w[3] - w[1])
        assert (w == [0, 0, 1, 1]).all() or A.bbox.jaccard(w[None], objects)[0, 0] >= 0.5 - 1e-6
        assert s > 0


def test_hsv_round_trip_and_known_colours():
    rgb_cases = {(0, 0, 255): (0, 255, 255), (0, 255, 0): (60, 255, 255), (255, 0, 0): (120, 255, 255),
                 (128, 128, 128): (0, 0, 128)}
    for bgr_red, hsv in rgb_cases.items():
        bgr = B([[bgr_red]], np.uint8)
        assert tuple(A.bgr_to_hsv(bgr)[0, 0]) == hsv
    image = np.random.default_rng(2).integers(0, 256, (8, 8, 3)).astype(np.uint8)
    assert np.abs(A.hsv_to_bgr(A.bgr_to_hsv(image)).astype(int) - image).max() <= 3


def test_resize_bilinear_by_hand():
    image = B([[0, 100], [100, 200]], np.uint8)[..., None]
    out = A.resize(image, 4, 4)
    # Pixel centres of the 4x4 map at -0.25, 0.25, 0.75, 1.25 of the 2x2: edges clamp.
    np.testing.assert_array_equal(out[..., 0], [[0, 25, 75, 100], [25, 50, 100, 125],
                                                [75, 100, 150, 175], [100, 125, 175, 200]])
    assert A.resize(image, 1, 1, nearest=True)[0, 0, 0] == 0


def data_layer(tmp_path, transform="", anno="", phase=caffe_pb2.TEST, batch=4, typed=True):
    source = write_annotated_lmdb(str(tmp_path / "lmdb"), typed=typed)
    text = (f'type: "AnnotatedData" top: "data" top: "label" transform_param {{ {transform} }} '
            f'data_param {{ source: "{source}" batch_size: {batch} backend: LMDB }} '
            f'annotated_data_param {{ {anno} }}')
    return build(text, [], num_tops=2, phase=phase)


def test_layer_without_augmentation(tmp_path):
    layer, _, top = data_layer(tmp_path, "mean_value: 100 scale: 0.5 resize_param { height: 24 width: 32 }")
    try:
        layer.forward([], top)
        assert top[0].shape == (4, 3, 24, 32)
        rows = top[1].data.reshape(-1, 8)
        expected = [[i, label, k, x0, y0, x1, y1, d] for i, boxes in enumerate(BOXES)
                    for label in sorted({b[0] for b in boxes})
                    for k, (_, x0, y0, x1, y1, d) in enumerate(b for b in boxes if b[0] == label)]
        np.testing.assert_allclose(rows, expected, atol=1e-6)
        # The first image's label-1 box is green (40, 200, 40): (200 - 100) * 0.5 in channel 1.
        assert top[0].data[0, 1, 6, 8] == pytest.approx(50)
    finally:
        layer.close()


def test_layer_with_the_published_augmentation(tmp_path):
    transform = ('mirror: true mean_value: 104 mean_value: 117 mean_value: 123 resize_param { height: 32 width: 32 '
                 'interp_mode: LINEAR interp_mode: NEAREST } emit_constraint { emit_type: CENTER } distort_param { '
                 'brightness_prob: 0.5 brightness_delta: 32 contrast_prob: 0.5 contrast_lower: 0.5 contrast_upper: 1.5 '
                 'hue_prob: 0.5 hue_delta: 18 saturation_prob: 0.5 saturation_lower: 0.5 saturation_upper: 1.5 } '
                 'expand_param { prob: 0.5 max_expand_ratio: 4 }')
    anno = ('batch_sampler { max_sample: 1 max_trials: 1 } batch_sampler { sampler { min_scale: 0.3 max_scale: 1 '
            'min_aspect_ratio: 0.5 max_aspect_ratio: 2 } sample_constraint { min_jaccard_overlap: 0.3 } '
            'max_sample: 1 max_trials: 50 }')
    layer, _, top = data_layer(tmp_path, transform, anno, phase=caffe_pb2.TRAIN)
    try:
        seen = 0
        for _ in range(5):
            layer.reshape([], top)
            layer.forward([], top)
            assert top[0].shape == (4, 3, 32, 32) and np.isfinite(top[0].data).all()
            rows = top[1].data.reshape(-1, 8)
            if rows[0, 0] == -1:
                assert rows.shape == (1, 8) and (rows == -1).all()
                continue
            seen += len(rows)
            assert set(rows[:, 0]) <= {0, 1, 2, 3} and set(rows[:, 1]) <= {1, 2}
            assert (rows[:, 3:7] >= 0).all() and (rows[:, 3:7] <= 1).all()
            assert (rows[:, 5] > rows[:, 3]).all() and (rows[:, 6] > rows[:, 4]).all()
        assert seen > 0
    finally:
        layer.close()


def test_untyped_records_give_datum_labels(tmp_path):
    layer, _, top = data_layer(tmp_path, "resize_param { height: 8 width: 8 }", typed=False)
    try:
        layer.forward([], top)
        assert top[1].shape == (4,) and list(top[1].data) == [b[0][0] for b in BOXES]
    finally:
        layer.close()


def test_refusals(tmp_path):
    with pytest.raises(NetspecError, match="resize_mode FIT_SMALL_SIZE is not supported"):
        data_layer(tmp_path, "resize_param { resize_mode: FIT_SMALL_SIZE height: 8 width: 8 }")
    with pytest.raises(NetspecError, match="does not exist"):
        build('type: "AnnotatedData" data_param { source: "nowhere" batch_size: 1 backend: LMDB }', [], num_tops=2)


def test_encoded_records(tmp_path):
    """SSD's LMDBs hold PNG/JPEG images (Datum.encoded): decoded like the Data layer's."""
    import io
    Image = pytest.importorskip("PIL.Image")
    from netspec.datasets.lmdb_io import datum_to_array, write_lmdb_atomically
    from ssd_data import annotated_datum, draw
    image = draw(BOXES[0], 24, 32, np.random.default_rng(0))
    png = io.BytesIO()
    Image.fromarray(image[..., ::-1]).save(png, format="PNG")     # the file holds RGB; Caffe's arrays are BGR
    record = annotated_datum(image, BOXES[0])
    record.datum.Clear()
    record.datum.data, record.datum.encoded = png.getvalue(), True
    try:
        datum_to_array(record.datum)
    except NetspecError as e:
        pytest.skip(f"no decoder for encoded Datums in this tree yet: {e}")
    write_lmdb_atomically(str(tmp_path / "lmdb"), [(b"0", record.SerializeToString())])
    layer, _, top = build(f'type: "AnnotatedData" data_param {{ source: "{tmp_path / "lmdb"}" batch_size: 1 '
                          'backend: LMDB }', [], num_tops=2)
    try:
        layer.forward([], top)
        np.testing.assert_array_equal(top[0].data[0], image.transpose(2, 0, 1))
        assert top[1].shape == (1, 1, 2, 8)
    finally:
        layer.close()
