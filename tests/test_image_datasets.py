"""Encoded Datums, LevelDB sources, OpenCV's resize and ImageData: expected values worked out here.

Pixels are expected as Caffe (OpenCV) gives them: BGR, channel-major. Decoded JPEG/PNG pixels are
compared with Pillow's decode done directly in the test; resized pixels with cv::resize's
bilinear rule computed pixel by pixel below, and with small cases worked out by hand.
"""
import io
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import netspec as caffe
from netspec import glog
from netspec.datasets.image_mean import compute_image_mean
from netspec.datasets.images import decode_image, resize_linear
from netspec.datasets.db import write_db_atomically
from netspec.errors import NetspecError
from netspec.proto import caffe_pb2
from netspec.schema import parse_prototxt

Image = pytest.importorskip("PIL.Image")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smooth_rgb(seed, h, w):
    """A photo-like image (smooth, so that JPEG keeps it close): (H, W, 3) uint8 RGB."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = [np.sin(x / (5 + 3 * c) + y / (7 + c) + seed) for c in range(3)]
    noise = rng.integers(0, 20, (h, w, 3))
    return np.clip(np.stack(base, -1) * 100 + 120 + noise, 0, 255).astype(np.uint8)


def encode(rgb, fmt, **options):
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, fmt, **options)
    return out.getvalue()


def bgr_chw(pil_image):
    return np.asarray(pil_image.convert("RGB"))[:, :, ::-1].transpose(2, 0, 1)


def pillow_decode(data):
    return Image.open(io.BytesIO(data))


def encoded_db(path, payloads, labels=None, backend="lmdb"):
    labels = labels if labels is not None else list(range(len(payloads)))
    records = ((f"{i:08d}", caffe_pb2.Datum(data=p, label=int(lab), encoded=True).SerializeToString())
               for i, (p, lab) in enumerate(zip(payloads, labels)))
    write_db_atomically(str(path), records, backend)
    return str(path)


def data_net(source, batch, phase=caffe.TEST, transform="", backend="backend: LMDB"):
    text = f"""
    layer {{ name: "d" type: "Data" top: "data" top: "label"
             transform_param {{ {transform} }}
             data_param {{ source: "{source}" batch_size: {batch} {backend} }} }}
    """
    return caffe.Net(parse_prototxt(textwrap.dedent(text), caffe_pb2.NetParameter()), phase)


# ---------------------------------------------------------------- decoding
def test_png_decodes_exactly_and_in_bgr_order():
    rgb = smooth_rgb(0, 9, 11)
    pixels = decode_image(encode(rgb, "PNG"))
    np.testing.assert_array_equal(pixels, rgb[:, :, ::-1].transpose(2, 0, 1))
    grey = rgb[..., 1].copy()
    np.testing.assert_array_equal(decode_image(encode(grey, "PNG")), grey[None])         # native: 1 channel
    np.testing.assert_array_equal(decode_image(encode(grey, "PNG"), color=True), np.stack([grey] * 3))


def test_png_to_grey_is_libpngs_rgb_to_gray():
    rgb = smooth_rgb(1, 6, 7)
    rgb[0, :3] = [[5, 5, 5], [250, 250, 250], [0, 0, 0]]          # grey pixels pass through unchanged
    got = decode_image(encode(rgb, "PNG"), color=False)
    expected = np.empty((6, 7), np.uint8)
    for y in range(6):
        for x in range(7):
            r, g, b = (int(v) for v in rgb[y, x])
            # png_set_rgb_to_gray(0.299, 0.587): coefficients 29900 * 32768 / 100000 (truncated)...
            rc, gc = 29900 * 32768 // 100000, 58700 * 32768 // 100000
            expected[y, x] = r if r == g == b else (rc * r + gc * g + (32768 - rc - gc) * b) >> 15
    np.testing.assert_array_equal(got, expected[None])


def test_jpeg_decodes_as_libjpeg_does():
    rgb = smooth_rgb(2, 32, 40)
    data = encode(rgb, "JPEG", quality=90)
    np.testing.assert_array_equal(decode_image(data), bgr_chw(pillow_decode(data)))
    # Grey from a colour JPEG is libjpeg's luma plane: within 1 of the ITU-R 601 weighting.
    grey = decode_image(data, color=False)[0].astype(int)
    r, g, b = (np.asarray(pillow_decode(data).convert("RGB"))[..., c].astype(float) for c in range(3))
    assert np.abs(grey - (0.299 * r + 0.587 * g + 0.114 * b)).max() <= 1.0


def test_sixteen_bit_png_keeps_the_high_byte():
    values = (np.arange(12, dtype=np.uint16) * 5000 + 7).reshape(3, 4)
    data = encode(values, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    np.testing.assert_array_equal(decode_image(data), (values >> 8).astype(np.uint8)[None])


def test_garbage_is_one_clear_error():
    with pytest.raises(NetspecError, match=r"^rec 3: cannot decode the image: its 5 bytes are not in an image"):
        decode_image(b"hello", where="rec 3")
    truncated = encode(smooth_rgb(3, 30, 30), "JPEG")[:200]
    with pytest.raises(NetspecError, match=r"^rec 4: cannot decode the image \("):
        decode_image(truncated, where="rec 4")


# ---------------------------------------------------------------- cv::resize INTER_LINEAR
def opencv_linear_rule(image, height, width):
    """cv::resize(INTER_LINEAR) on 8-bit images, pixel by pixel: centres (d + 0.5) * scale - 0.5 in
    float, edge taps clamped with weight 0, weights round(2048 * f), rows then columns summed as
    integers and shifted right by 22 with rounding."""
    def taps(src, dst):
        scale = 1.0 / (dst / src)
        out = []
        for d in range(dst):
            f = np.float32((d + 0.5) * scale - 0.5)
            s = math.floor(f)
            f = np.float32(f - np.float32(s))
            if s < 0:
                s, f = 0, np.float32(0)
            if s >= src - 1:
                s, f = src - 1, np.float32(0)
            out.append((s, min(s + 1, src - 1), round(float((np.float32(1) - f) * 2048)), round(float(f * 2048))))
        return out
    c = image.shape[0]
    xs, ys = taps(image.shape[2], width), taps(image.shape[1], height)
    out = np.empty((c, height, width), np.uint8)
    for ch in range(c):
        p = image[ch].astype(int).tolist()
        for y, (y0, y1, b0, b1) in enumerate(ys):
            for x, (x0, x1, a0, a1) in enumerate(xs):
                top = p[y0][x0] * a0 + p[y0][x1] * a1
                bottom = p[y1][x0] * a0 + p[y1][x1] * a1
                out[ch, y, x] = min(255, (top * b0 + bottom * b1 + (1 << 21)) >> 22)
    return out


def test_resize_small_cases_by_hand():
    # 1x2 -> 1x4: centres at -0.25 (clamped), 0.25, 0.75, 1.25 (clamped): 0, 63.75, 191.25, 255.
    np.testing.assert_array_equal(resize_linear(np.array([[[0, 255]]], np.uint8), 1, 4), [[[0, 64, 191, 255]]])
    # 1x4 -> 1x2 (no area filter): centres 0.5 and 2.5: (0+100)/2 and (200+255)/2 = 227.5 -> 228.
    np.testing.assert_array_equal(resize_linear(np.array([[[0, 100, 200, 255]]], np.uint8), 1, 2), [[[50, 228]]])
    # 3x3 -> 2x2: centres 0.25 and 1.75 both ways.
    img = np.array([[[10, 20, 30], [40, 50, 60], [70, 80, 90]]], np.uint8)
    np.testing.assert_array_equal(resize_linear(img, 2, 2), [[[20, 35], [65, 80]]])


@pytest.mark.parametrize("shape,size", [((3, 37, 53), (19, 71)), ((3, 64, 48), (227, 227)),
                                        ((1, 50, 50), (25, 25)), ((3, 41, 29), (41, 60)), ((1, 7, 5), (3, 9))])
def test_resize_follows_opencvs_rule(shape, size):
    img = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    np.testing.assert_array_equal(resize_linear(img, *size), opencv_linear_rule(img, *size))


# ---------------------------------------------------------------- the Data layer on encoded Datums
def test_data_layer_decodes_jpeg_and_png_datums(tmp_path):
    images = [smooth_rgb(i, 12, 10) for i in range(5)]
    payloads = [encode(im, "JPEG" if i % 2 else "PNG") for i, im in enumerate(images)]
    net = data_net(encoded_db(tmp_path / "db", payloads, [7, 1, 2, 3, 4]), batch=5)
    out = net.forward()
    for i, p in enumerate(payloads):
        np.testing.assert_array_equal(out["data"][i], bgr_chw(pillow_decode(p)).astype(np.float32))
    np.testing.assert_array_equal(out["label"], [7, 1, 2, 3, 4])
    np.testing.assert_array_equal(out["data"][0], images[0][:, :, ::-1].transpose(2, 0, 1))    # PNG: exact
    assert net.layers[0]._decoders is not None and net.layers[0]._decoders._max_workers >= 1


def test_force_gray_and_force_color(tmp_path):
    colour = smooth_rgb(5, 8, 8)
    grey = colour[..., 0].copy()
    db = encoded_db(tmp_path / "db", [encode(colour, "PNG"), encode(grey, "PNG")])
    out = data_net(db, 2, transform="force_gray: true").forward()["data"]
    assert out.shape == (2, 1, 8, 8)
    np.testing.assert_array_equal(out[1, 0], grey)
    out = data_net(db, 2, transform="force_color: true").forward()["data"]
    assert out.shape == (2, 3, 8, 8)
    np.testing.assert_array_equal(out[1], np.stack([grey] * 3))
    # Without either, a grey image after a colour one does not fit the batch: one clear line.
    with pytest.raises(NetspecError, match=r"db record 1 has shape \(1, 8, 8\); the first one has \(3, 8, 8\)"):
        data_net(db, 2).forward()
    with pytest.raises(NetspecError, match="sets both force_color and force_gray"):
        data_net(db, 2, transform="force_color: true force_gray: true")


def test_mixed_sizes_are_each_cropped(tmp_path):
    images = [smooth_rgb(i, 10 + 2 * i, 12 + i) for i in range(3)]
    db = encoded_db(tmp_path / "db", [encode(im, "PNG") for im in images])
    out = data_net(db, 3, transform="crop_size: 6 mean_value: 10 mean_value: 20 mean_value: 30").forward()
    for i, im in enumerate(images):
        bgr = im[:, :, ::-1].transpose(2, 0, 1).astype(np.float32)
        h0, w0 = (bgr.shape[1] - 6) // 2, (bgr.shape[2] - 6) // 2          # TEST: the centre
        expected = bgr[:, h0:h0 + 6, w0:w0 + 6] - np.array([10, 20, 30], np.float32)[:, None, None]
        np.testing.assert_array_equal(out["data"][i], expected)
    with pytest.raises(NetspecError, match="db record 1 has shape"):
        data_net(db, 3).forward()


def test_train_crops_and_mirrors_encoded_images(tmp_path):
    img = smooth_rgb(9, 9, 9)
    db = encoded_db(tmp_path / "db", [encode(img, "PNG")])
    bgr = img[:, :, ::-1].transpose(2, 0, 1).astype(np.float32)
    windows = {(bgr[:, y:y + 5, x:x + 5][:, :, ::f].tobytes()) for y in range(5) for x in range(5) for f in (1, -1)}
    net = data_net(db, 1, phase=caffe.TRAIN, transform="crop_size: 5 mirror: true")
    for _ in range(10):
        assert net.forward()["data"][0].tobytes() in windows


def test_image_mean_of_encoded_records(tmp_path):
    images = [smooth_rgb(i, 6, 5) for i in range(4)]
    for backend in ("lmdb", "leveldb"):
        pytest.importorskip("plyvel") if backend == "leveldb" else None
        db = encoded_db(tmp_path / backend, [encode(im, "PNG") for im in images], backend=backend)
        blob = compute_image_mean(db, backend=backend)
        expected = np.mean([im[:, :, ::-1].transpose(2, 0, 1) for im in images], axis=0, dtype=np.float64)
        assert (blob.channels, blob.height, blob.width) == (3, 6, 5)
        np.testing.assert_allclose(np.asarray(blob.data).reshape(3, 6, 5), expected, rtol=1e-6)


# ---------------------------------------------------------------- LevelDB


def test_leveldb_is_the_default_backend(tmp_path):
    plyvel = pytest.importorskip("plyvel")
    pixels = np.arange(5 * 1 * 2 * 3, dtype=np.uint8).reshape(5, 1, 2, 3)
    db = plyvel.DB(str(tmp_path / "ldb"), create_if_missing=True)        # written by plyvel directly
    for i, p in enumerate(pixels):
        d = caffe_pb2.Datum(channels=1, height=2, width=3, data=p.tobytes(), label=i)
        db.put(b"%08d" % i, d.SerializeToString())
    db.close()
    net = data_net(tmp_path / "ldb", 3, backend="")                       # no backend line: LEVELDB
    first = {k: v.copy() for k, v in net.forward().items()}
    second = net.forward()
    np.testing.assert_array_equal(first["data"], pixels[:3])
    np.testing.assert_array_equal(second["data"], pixels[[3, 4, 0]])      # wraps around, as Caffe
    np.testing.assert_array_equal(second["label"], [3, 4, 0])
    net.close()


def test_an_lmdb_named_as_leveldb_is_read_with_a_warning(tmp_path):
    db = encoded_db(tmp_path / "lmdb", [encode(smooth_rgb(0, 4, 4), "PNG")])
    stream = io.StringIO()
    glog.configure(stream)
    try:
        out = data_net(db, 1, backend="").forward()
    finally:
        glog.configure()
    assert out["data"].shape == (1, 3, 4, 4)
    assert f"{db} holds an LMDB database, not the LevelDB that the backend names" in stream.getvalue()


LOCK_HOLDER = """
import sys, plyvel
db = plyvel.DB(sys.argv[1])
print("locked", flush=True)
sys.stdin.read()
"""


def test_locked_leveldb_is_one_line(tmp_path):
    pytest.importorskip("plyvel")
    db = encoded_db(tmp_path / "ldb", [encode(smooth_rgb(0, 4, 4), "PNG")], backend="leveldb")
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, db], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(NetspecError, match=r"layer 'd' \(Data\): LevelDB '.*ldb' is locked by another process"):
            data_net(db, 1, backend="backend: LEVELDB")
        done = subprocess.run([sys.executable, "-m", "netspec", "compute_image_mean", db, "--backend=leveldb"],
                              capture_output=True, text=True, timeout=60, cwd=REPO)
        assert done.returncode == 1
        assert done.stderr.count("\n") == 1 and "is locked by another process" in done.stderr
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


# ---------------------------------------------------------------- ImageData
def image_data_net(tmp_path, lines, params="", transform="", phase=caffe.TEST):
    (tmp_path / "list.txt").write_text("".join(f"{n} {lab}\n" for n, lab in lines))
    text = f"""layer {{ name: "im" type: "ImageData" top: "data" top: "label" transform_param {{ {transform} }}
        image_data_param {{ source: "{tmp_path / 'list.txt'}" root_folder: "{tmp_path}/" {params} }} }}"""
    return caffe.Net(parse_prototxt(text, caffe_pb2.NetParameter()), phase)


def test_image_data_resizes_with_opencvs_rule(tmp_path):
    sizes = [(40, 30), (17, 23), (64, 64)]
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(smooth_rgb(i, h, w)).save(tmp_path / f"{i}.png")
    net = image_data_net(tmp_path, [(f"{i}.png", i) for i in range(3)],
                         "batch_size: 3 new_height: 24 new_width: 20")
    out = net.forward()
    for i, (h, w) in enumerate(sizes):
        bgr = smooth_rgb(i, h, w)[:, :, ::-1].transpose(2, 0, 1)
        np.testing.assert_array_equal(out["data"][i], opencv_linear_rule(bgr, 24, 20))
    np.testing.assert_array_equal(out["label"], [0, 1, 2])


def test_image_data_grey_and_mixed_sizes_cropped(tmp_path):
    sizes = [(12, 9), (10, 14)]
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(smooth_rgb(i, h, w)).save(tmp_path / f"{i}.png")
    net = image_data_net(tmp_path, [("0.png", 0), ("1.png", 1)], "batch_size: 2 is_color: false",
                         transform="crop_size: 8")
    out = net.forward()["data"]
    assert out.shape == (2, 1, 8, 8)
    for i, (h, w) in enumerate(sizes):
        grey = decode_image((tmp_path / f"{i}.png").read_bytes(), color=False)[0]
        y, x = (h - 8) // 2, (w - 8) // 2
        np.testing.assert_array_equal(out[i, 0], grey[y:y + 8, x:x + 8])


def test_image_data_shuffles_skips_and_names_missing_files(tmp_path):
    for i in range(6):
        Image.fromarray(np.full((2, 2, 3), i * 40, np.uint8)).save(tmp_path / f"im {i}.png")   # spaces: last one splits
    net = image_data_net(tmp_path, [(f"im {i}.png", i) for i in range(6)], "batch_size: 6 shuffle: true")
    labels = net.forward()["label"]
    assert sorted(labels) == list(range(6))
    for row, lab in zip(net.blobs["data"].data, labels):
        assert row.max() == lab * 40                         # each label stays with its own image
    net = image_data_net(tmp_path, [(f"im {i}.png", i) for i in range(6)], "batch_size: 2 rand_skip: 5")
    first = net.forward()["label"]
    assert first[0] in range(5) and first[1] == (first[0] + 1) % 6
    (tmp_path / "list.txt").write_text("im 0.png 0\nnot-there.png 1\n")
    with pytest.raises(NetspecError, match=r"not-there.png: No such file or directory"):
        image_data_net(tmp_path, [("im 0.png", 0), ("not-there.png", 1)], "batch_size: 2").forward()
