"""netspec.io (pycaffe's caffe.io) on small cases worked out by hand."""
import struct
import zlib

import numpy as np
import pytest

from netspec import NetspecError, io
from netspec.datasets import lmdb_io
from netspec.proto import caffe_pb2
from netspec.weights import array_to_blob


# ------------------------------------------------------------------ BlobProto

def test_blobproto_round_trip_with_diff():
    arr = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
    diff = -arr
    bp = io.array_to_blobproto(arr, diff)
    assert list(bp.shape.dim) == [2, 3]
    assert list(bp.data) == [0, 0.25, 0.5, 0.75, 1.0, 1.25]
    assert list(bp.diff) == [0, -0.25, -0.5, -0.75, -1.0, -1.25]
    np.testing.assert_array_equal(io.blobproto_to_array(bp), arr)
    np.testing.assert_array_equal(io.blobproto_to_array(bp, return_diff=True), diff)
    assert io.blobproto_to_array(bp).dtype == np.float32


def test_blobproto_legacy_shape_and_errors():
    bp = caffe_pb2.BlobProto(num=1, channels=2, height=1, width=2, data=[1, 2, 3, 4])
    np.testing.assert_array_equal(io.blobproto_to_array(bp), [[[[1, 2]], [[3, 4]]]])
    with pytest.raises(NetspecError, match="holds 0 diff values, expected 4"):
        io.blobproto_to_array(bp, return_diff=True)
    with pytest.raises(NetspecError, match="diff has 2 values, the array 3"):
        io.array_to_blobproto(np.zeros(3), diff=np.zeros(2))


def test_blobprotovector_string_round_trip():
    arrays = [np.array([[1.5, -2.0]], np.float32), np.arange(24, dtype=np.float32).reshape(2, 3, 4)]
    data = io.arraylist_to_blobprotovector_str(arrays)
    vec = caffe_pb2.BlobProtoVector.FromString(data)
    assert [list(b.shape.dim) for b in vec.blobs] == [[1, 2], [2, 3, 4]]
    back = io.blobprotovector_str_to_arraylist(data)
    assert len(back) == 2
    for got, want in zip(back, arrays):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(NetspecError, match="not a serialized BlobProtoVector"):
        io.blobprotovector_str_to_arraylist(b"\xff\xff\xff")


def test_datum_helpers_are_the_lmdb_ones():
    assert io.array_to_datum is lmdb_io.array_to_datum and io.datum_to_array is lmdb_io.datum_to_array
    pixels = np.array([[[0, 255], [7, 8]]], np.uint8)
    datum = io.array_to_datum(pixels, label=3)
    assert (datum.channels, datum.height, datum.width, datum.label) == (1, 2, 2, 3)
    assert datum.data == bytes([0, 255, 7, 8])
    np.testing.assert_array_equal(io.datum_to_array(datum), pixels)
    floats = io.array_to_datum(np.full((2, 1, 1), 0.5))
    assert list(floats.float_data) == [0.5, 0.5] and not floats.data


# ------------------------------------------------------------------ Transformer

def rgb_transformer():
    t = io.Transformer({"data": (1, 3, 2, 2)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    t.set_mean("data", np.array([10, 20, 30]))
    t.set_input_scale("data", 0.5)
    return t


def test_preprocess_order_by_hand():
    image = np.zeros((2, 2, 3), np.float32)
    image[0, 0] = (0.2, 0.4, 1.0)          # RGB
    image[1, 1] = (1.0, 0.0, 0.0)
    before = image.copy()
    out = rgb_transformer().preprocess("data", image)
    assert out.shape == (3, 2, 2) and out.dtype == np.float32
    # BGR (1.0, 0.4, 0.2) * 255 = (255, 102, 51); - (10, 20, 30) = (245, 82, 21); * 0.5:
    np.testing.assert_allclose(out[:, 0, 0], [122.5, 41.0, 10.5], rtol=1e-6)
    # (0, 0, 1) * 255 - mean, halved:
    np.testing.assert_allclose(out[:, 1, 1], [-5.0, -10.0, 112.5], rtol=1e-6)
    # A black pixel is just -mean / 2.
    np.testing.assert_allclose(out[:, 0, 1], [-5.0, -10.0, -15.0])
    np.testing.assert_array_equal(image, before)        # the caller's image is untouched


def test_deprocess_inverts_preprocess():
    rng = np.random.default_rng(0)
    image = rng.random((2, 2, 3)).astype(np.float32)
    t = rgb_transformer()
    np.testing.assert_allclose(t.deprocess("data", t.preprocess("data", image)[np.newaxis]), image, atol=1e-6)


def test_preprocess_resizes_and_per_pixel_mean():
    t = io.Transformer({"data": (1, 1, 2, 3)})
    t.set_transpose("data", (2, 0, 1))
    t.set_mean("data", np.array([[1, 2, 3], [4, 5, 6]], np.float32))     # H x W for one channel
    out = t.preprocess("data", np.full((1, 1, 1), 10, np.float32))      # 1x1 resized to 2x3
    np.testing.assert_array_equal(out, [[[9, 8, 7], [6, 5, 4]]])


def test_transformer_errors():
    t = io.Transformer({"data": (1, 3, 4, 4)})
    with pytest.raises(NetspecError, match="'image' is not one of the net inputs: data"):
        t.set_raw_scale("image", 255)
    with pytest.raises(NetspecError, match="needs 3 channels"):
        t.set_channel_swap("data", (1, 0))
    with pytest.raises(NetspecError, match="permutation of 3 axes"):
        t.set_transpose("data", (0, 1))
    with pytest.raises(NetspecError, match="mean has 2 channels, the input has 3"):
        t.set_mean("data", np.zeros(2))
    with pytest.raises(NetspecError, match=r"mean shape \(3, 2, 2\) does not match the input's \(3, 4, 4\)"):
        t.set_mean("data", np.zeros((3, 2, 2)))
    with pytest.raises(NetspecError, match=r"expected one 3-D image \(H x W x K\), got shape \(4, 4\)"):
        t.preprocess("data", np.zeros((4, 4)))


# ------------------------------------------------------------------ resizing and crops

def test_resize_bilinear_upsample_by_hand():
    im = np.array([[0, 1], [2, 3]], np.float32)[:, :, np.newaxis]
    out = io.resize_image(im, (4, 4))
    # Output centres map to input rows/cols -0.25, 0.25, 0.75, 1.25, clamped to [0, 1].
    w = np.array([0, 0.25, 0.75, 1])
    np.testing.assert_allclose(out[:, :, 0], 2 * w[:, None] + w[None, :])
    assert out.shape == (4, 4, 1) and out.dtype == np.float32


def test_resize_downsample_averages_blocks_and_nearest():
    im = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    np.testing.assert_allclose(io.resize_image(im, (2, 2))[:, :, 0], [[2.5, 4.5], [10.5, 12.5]])
    small = np.array([[1, 2], [3, 4]], np.float32)[:, :, np.newaxis]
    nearest = io.resize_image(small, (4, 6), interp_order=0)[:, :, 0]
    np.testing.assert_array_equal(nearest, np.repeat(np.repeat(small[:, :, 0], 2, 0), 3, 1))
    with pytest.raises(NetspecError, match="interp_order 3"):
        io.resize_image(small, (2, 2), interp_order=3)


def test_oversample_ten_crops():
    im = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    crops = io.oversample([im, im + 100], (2, 2))
    assert crops.shape == (20, 2, 2, 1)
    plane = im[:, :, 0]
    expected = [plane[:2, :2], plane[:2, 2:], plane[2:, :2], plane[2:, 2:], plane[1:3, 1:3]]
    expected += [e[:, ::-1] for e in expected]
    for k in range(10):
        np.testing.assert_array_equal(crops[k, :, :, 0], expected[k])
        np.testing.assert_array_equal(crops[10 + k, :, :, 0], expected[k] + 100)


# ------------------------------------------------------------------ load_image

def write_png(path, pixels):
    """A minimal 8-bit PNG (gray if 2-D, RGB if H x W x 3), written without any image library."""
    pixels = np.asarray(pixels, np.uint8)
    color_type = 0 if pixels.ndim == 2 else 2
    height, width = pixels.shape[:2]

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)       # filter type 0 per row
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw)))
        f.write(chunk(b"IEND", b""))


def test_load_image_png(tmp_path):
    pytest.importorskip("matplotlib")
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]],
                    [[0, 0, 0], [255, 255, 255], [51, 102, 204]]], np.uint8)
    path = tmp_path / "rgb.png"
    write_png(path, rgb)
    img = io.load_image(str(path))
    assert img.shape == (2, 3, 3) and img.dtype == np.float32
    np.testing.assert_allclose(img, rgb / 255.0, atol=1e-6)
    gray = io.load_image(str(path), color=False)
    assert gray.shape == (2, 3, 1)
    np.testing.assert_allclose(gray[0, :, 0], [0.2125, 0.7154, 0.0721], atol=1e-6)
    np.testing.assert_allclose(gray[1, 2, 0], 0.2125 * 0.2 + 0.7154 * 0.4 + 0.0721 * 0.8, atol=1e-6)

    gray_path = tmp_path / "gray.png"
    write_png(gray_path, np.array([[0, 255]], np.uint8))
    as_color = io.load_image(str(gray_path))
    assert as_color.shape == (1, 2, 3)
    np.testing.assert_allclose(as_color[0, 1], [1, 1, 1])
    np.testing.assert_allclose(io.load_image(str(gray_path), color=False)[:, :, 0], [[0, 1]])


def test_load_image_errors(tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(NetspecError, match="no such file"):
        io.load_image(str(tmp_path / "missing.png"))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(NetspecError, match="cannot read the image"):
        io.load_image(str(bad))


@pytest.mark.parametrize("shape", [(3,), (2, 3, 4), (0,), (1, 200, 70)])
def test_array_to_blob_writes_what_protobuf_would(shape):
    # array_to_blob builds the packed float bytes itself (no Python list); they must be exactly
    # what protobuf makes from the same values, so Caffe reads them.
    data = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    diff = data * -3
    expected = caffe_pb2.BlobProto()
    expected.shape.dim.extend(shape)
    expected.data.extend(data.ravel().tolist())
    expected.diff.extend(diff.ravel().tolist())
    got = array_to_blob(data, caffe_pb2.BlobProto(), diff=diff)
    assert got.SerializeToString() == expected.SerializeToString()
    assert list(got.data) == list(expected.data) and list(got.diff) == list(expected.diff)
