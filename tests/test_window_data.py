"""The WindowData layer: window files, Caffe's window geometry, crops, sampling, mean, mirror, resume.

Images are PNGs written here with Pillow (lossless, so the pixels the layer reads are known);
expected crops are worked out by hand from Caffe's arithmetic, or chosen so that no resizing
happens (window size == crop size) and the crop is a plain slice of the image.
"""
import numpy as np
import pytest
from PIL import Image

import netspec as caffe
from netspec.errors import NetspecError
from netspec.layers.window_data import warp_geometry
from netspec.proto import caffe_pb2


# ---------------------------------------------------------------- geometry, by hand
@pytest.mark.parametrize("box, pad, square, mirror, expected", [
    # No context, warp: the window as it is, resized to the whole crop.
    ((2, 1, 5, 4), 0, False, False, ((2, 1, 5, 4), (8, 8), 0, 0)),
    # crop 8, context_pad 2: scale 8 / 4 = 2 about the centre (4, 3): x 0..8, y -1..7 (9 x 9);
    # y -1 is clipped (pad_y1 = 1 -> round(1 * 8/9) = 1), the 9 x 8 region goes to round(9 * 8/9) = 8
    # by round(8 * 8/9) = 7 at rows 1..7.
    ((2, 1, 5, 4), 2, False, False, ((0, 0, 8, 7), (8, 7), 0, 1)),
    # Near the right edge: x 4..12 is clipped to 4..9 (pad_x2 = 3 -> round(3 * 8/9) = 3), width
    # round(6 * 8/9) = 5; mirrored, the 3 padding columns move to the left.
    ((6, 2, 9, 5), 2, False, False, ((4, 0, 9, 7), (5, 7), 0, 0)),
    ((6, 2, 9, 5), 2, False, True, ((4, 0, 9, 7), (5, 7), 3, 0)),
    # Square: the 2 x 4 window grows to 4 x 4 about its centre (3, 3): x 1..5, y 1..5.
    ((2, 1, 3, 4), 0, True, False, ((1, 1, 5, 5), (8, 8), 0, 0)),
    # Halves round away from zero, as C's round(): centre 1.5, half width 1.5 * 2 -> x1 = round(-1.5) = -2.
    ((0, 0, 2, 2), 2, False, False, ((0, 0, 5, 5), (6, 6), 2, 2)),
])
def test_geometry(box, pad, square, mirror, expected):
    assert warp_geometry(box, 10, 8, 8, pad, square, mirror) == expected


# ---------------------------------------------------------------- fixtures
def gradient_image(path, width=10, height=8):
    """RGB PNG with pixel (x, y) = (R 200 - 10y - x, G 100 + 10y + x, B 10y + x)."""
    y, x = np.mgrid[:height, :width]
    rgb = np.stack([200 - 10 * y - x, 100 + 10 * y + x, 10 * y + x], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return rgb[:, :, ::-1].transpose(2, 0, 1).astype(np.float32)       # BGR, channel-major, as Caffe


def constant_image(path, bgr, width=10, height=8):
    Image.fromarray(np.full((height, width, 3), bgr[::-1], np.uint8)).save(path)


def window_file(path, records):
    """records: [(image path, [(class, overlap, x1, y1, x2, y2), ...])]."""
    lines = []
    for i, (image, windows) in enumerate(records):
        lines += [f"# {i}", str(image), "3", "8", "10", str(len(windows))]
        lines += [" ".join(str(v) for v in w) for w in windows]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def window_net(tmp_path, source, batch=2, crop=4, transform="", param=""):
    net = tmp_path / "net.prototxt"
    net.write_text(f'layer {{ name: "win" type: "WindowData" top: "data" top: "label"\n'
                   f'  transform_param {{ crop_size: {crop} {transform} }}\n'
                   f'  window_data_param {{ source: "{source}" batch_size: {batch} {param} }} }}\n')
    return caffe.Net(str(net), caffe.TRAIN)


# ---------------------------------------------------------------- crops
def test_crops_are_the_windows_pixels_background_first(tmp_path):
    pixels = gradient_image(tmp_path / "g.png")
    source = window_file(tmp_path / "w.txt", [(tmp_path / "g.png", [
        (3, 0.9, 5, 3, 8, 6),            # foreground, class 3: x 5..8, y 3..6 (4 x 4 = the crop)
        (7, 0.1, 1, 0, 4, 3),            # background: class forced to 0
    ])])
    net = window_net(tmp_path, source, transform="mean_value: 10 mean_value: 20 mean_value: 30",
                     param="fg_fraction: 0.5 scale: 0.5")
    assert net.blobs["data"].shape == (2, 3, 4, 4)
    net.forward()
    mean = np.array([10, 20, 30], np.float32)[:, None, None]
    assert list(net.blobs["label"].data) == [0, 3]
    np.testing.assert_array_equal(net.blobs["data"].data[0], (pixels[:, 0:4, 1:5] - mean) * 0.5)
    np.testing.assert_array_equal(net.blobs["data"].data[1], (pixels[:, 3:7, 5:9] - mean) * 0.5)
    net.close()


def test_mirror_flips_some_crops(tmp_path):
    pixels = gradient_image(tmp_path / "g.png")
    source = window_file(tmp_path / "w.txt", [(tmp_path / "g.png", [(1, 0.8, 2, 2, 5, 5), (0, 0.0, 0, 0, 3, 3)])])
    net = window_net(tmp_path, source, batch=4, transform="mirror: true")
    crop = pixels[:, 2:6, 2:6]
    flips = []
    for _ in range(16):
        net.forward()
        for item in net.blobs["data"].data[3:]:          # fg_fraction 0.25 of 4: the last one
            assert np.array_equal(item, crop) or np.array_equal(item, crop[:, :, ::-1])
            flips.append(np.array_equal(item, crop[:, :, ::-1]))
    assert 0 < sum(flips) < len(flips)
    net.close()


def test_context_padding_and_mean_file(tmp_path):
    constant_image(tmp_path / "c.png", (40, 50, 60))
    mean = np.arange(3 * 10 * 10, dtype=np.float32).reshape(3, 10, 10)
    blob = caffe_pb2.BlobProto(num=1, channels=3, height=10, width=10)
    blob.data.extend(mean.ravel())
    (tmp_path / "mean.binaryproto").write_bytes(blob.SerializeToString())
    # The third geometry case above: region 8 wide, 7 high, at rows 1..7 of the 8 x 8 crop.
    source = window_file(tmp_path / "w.txt", [(tmp_path / "c.png", [(2, 0.7, 2, 1, 5, 4), (0, 0.2, 0, 0, 3, 3)])])
    net = window_net(tmp_path, source, crop=8, transform=f'mean_file: "{tmp_path / "mean.binaryproto"}"',
                     param="fg_fraction: 0.5 context_pad: 2")
    net.forward()
    fg = net.blobs["data"].data[1]
    assert np.all(fg[:, 0] == 0)                                       # the padding row stays zero
    offset = (10 - 8) // 2                                             # Caffe's mean_off
    expected = np.array([40, 50, 60], np.float32)[:, None, None] - mean[:, offset + 1:offset + 8, offset:offset + 8]
    np.testing.assert_array_equal(fg[:, 1:8, :], expected)
    net.close()


def test_sampling_keeps_classes_and_drops_windows_between_thresholds(tmp_path):
    gradient_image(tmp_path / "g.png")
    constant_image(tmp_path / "mid.png", (250, 250, 250))
    source = window_file(tmp_path / "w.txt", [
        (tmp_path / "g.png", [(1, 0.6, 0, 0, 3, 3), (2, 0.95, 4, 4, 7, 7), (5, 0.1, 6, 0, 9, 3)]),
        (tmp_path / "mid.png", [(4, 0.4, 0, 0, 3, 3)]),                # 0.3 <= 0.4 < 0.5: neither
    ])
    net = window_net(tmp_path, source, batch=8, param="fg_threshold: 0.5 bg_threshold: 0.3")   # 2 fg, 6 bg
    labels = []
    for _ in range(10):
        net.forward()
        labels.append(list(net.blobs["label"].data))
        assert not np.any(net.blobs["data"].data == 250)
    assert all(row[:6] == [0] * 6 and set(row[6:]) <= {1, 2} for row in labels)
    assert {v for row in labels for v in row[6:]} == {1, 2}
    net.close()


def test_cached_images_give_the_same_batches(tmp_path):
    gradient_image(tmp_path / "g.png")
    source = window_file(tmp_path / "w.txt", [(tmp_path / "g.png", [(1, 0.6, 0, 0, 5, 6), (0, 0.1, 3, 1, 9, 7)])])
    batches = []
    for cache in ("false", "true"):
        caffe.set_random_seed(5) if hasattr(caffe, "set_random_seed") else caffe.rng.set_seed(5)
        net = window_net(tmp_path, source, batch=4, transform="mirror: true",
                         param=f"context_pad: 1 cache_images: {cache}")
        net.forward()
        batches.append(net.blobs["data"].data.copy())
        net.close()
    np.testing.assert_array_equal(batches[0], batches[1])


def test_resume_state_repeats_the_next_batches(tmp_path):
    gradient_image(tmp_path / "g.png")
    source = window_file(tmp_path / "w.txt", [(tmp_path / "g.png", [(1, 0.6, 0, 0, 5, 6), (2, 0.7, 1, 1, 4, 4),
                                                                    (0, 0.1, 3, 1, 9, 7), (0, 0.0, 2, 2, 8, 6)])])
    net = window_net(tmp_path, source, batch=4, transform="mirror: true", param="context_pad: 1")
    net.forward()
    state = net.layers[0].get_resume_state()
    after = [net.forward()["data"].copy() for _ in range(3)]
    other = window_net(tmp_path, source, batch=4, transform="mirror: true", param="context_pad: 1")
    other.layers[0].set_resume_state(state)
    for want in after:
        np.testing.assert_array_equal(other.forward()["data"], want)
    net.close()
    other.close()


# ---------------------------------------------------------------- bad input
def refused(tmp_path, source, **kw):
    with pytest.raises(NetspecError) as e:
        window_net(tmp_path, source, **kw)
    assert "\n" not in str(e.value) and "layer 'win' (WindowData)" in str(e.value)
    return str(e.value)


def test_bad_window_files(tmp_path):
    gradient_image(tmp_path / "g.png")
    ok = [(tmp_path / "g.png", [(1, 0.6, 0, 0, 3, 3), (0, 0.1, 4, 4, 7, 7)])]
    assert "cannot read window file" in refused(tmp_path, str(tmp_path / "none.txt"))
    gone = window_file(tmp_path / "w1.txt", [(tmp_path / "gone.png", ok[0][1])])
    assert f"image '{tmp_path / 'gone.png'}' does not exist" in refused(tmp_path, gone)
    bad = tmp_path / "w2.txt"
    bad.write_text(f"# 0\n{tmp_path / 'g.png'}\n3 8 10\n1\n1 0.6 0 0 three 3\n")
    assert f"{bad}:5: expected a window's x2, got 'three'" in refused(tmp_path, str(bad))
    fg0 = window_file(tmp_path / "w3.txt", [(tmp_path / "g.png", [(0, 0.6, 0, 0, 3, 3), (0, 0.1, 4, 4, 7, 7)])])
    assert "foreground window (overlap 0.6 >= fg_threshold 0.5) has class 0" in refused(tmp_path, fg0)
    no_fg = window_file(tmp_path / "w4.txt", [(tmp_path / "g.png", [(0, 0.1, 4, 4, 7, 7)])])
    assert "no foreground windows (overlap >= fg_threshold 0.5), but each batch takes 1" in \
        refused(tmp_path, no_fg, batch=4)
    good = window_file(tmp_path / "w5.txt", ok)
    assert "needs transform_param { crop_size }" in refused(tmp_path, good, crop=0)
    assert "crop_mode 'stretch' is not one of warp, square" in refused(tmp_path, good, param='crop_mode: "stretch"')


def test_window_outside_the_image_names_it(tmp_path):
    gradient_image(tmp_path / "g.png")
    source = window_file(tmp_path / "w.txt", [(tmp_path / "g.png", [(1, 0.6, 7, 5, 10, 8), (0, 0.1, 0, 0, 3, 3)])])
    net = window_net(tmp_path, source, param="fg_fraction: 0.5")
    with pytest.raises(NetspecError, match=r"window \(7, 5, 10, 8\) does not fit image .*g.png \(10x8\)"):
        net.forward()
    net.close()
