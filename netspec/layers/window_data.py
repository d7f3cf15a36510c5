"""WindowData: R-CNN's fine-tuning input, windows cut out of images and warped to crop_size (Caffe's layer).

The window file lists, per image, `# image_index`, the path, channels, height, width, the
number of windows and one `class_index overlap x1 y1 x2 y2` line per window (pixels, both
ends inclusive). Windows with overlap >= fg_threshold are foreground (their class), those
below bg_threshold background (class 0), the rest unused. Each batch holds
batch_size - int(batch_size * fg_fraction) background windows, then the foreground ones,
each drawn at random, read in colour (BGR, as cv::imread), optionally widened by context_pad
(or made square), resized bilinearly as cv::resize into the crop_size square, mirrored at
random with transform_param.mirror (in either phase, as Caffe), minus the mean, times the scale.

The scale is read from transform_param: netspec's upgrade moves window_data_param's scale,
mean_file, crop_size and mirror there (upgrade.py). Caffe's layer reads window_data_param.scale
and ignores transform_param.scale; here a scale written in either place is applied.
"""
import os

import numpy as np

from .. import glog
from ..datasets.images import decode_image, read_image, resize_linear
from ..errors import NetspecError
from ..reading import refuse_special
from ..rng import get_rng
from .base import Layer, register
from .data import _Prefetcher

F32 = np.float32
PREFETCH_DEPTH = 4


def c_round(x):
    """C's round(): halves away from zero."""
    return int(np.copysign(np.floor(abs(float(x)) + 0.5), float(x)))


def warp_geometry(box, image_width, image_height, crop, context_pad, square, mirror):
    """Caffe's window arithmetic (in float32, as its Dtype): the image region to take (x1, y1, x2, y2,
    clipped to the image), the (width, height) it is resized to, and its offset (pad_w, pad_h) in
    the crop. With context padding the window is widened by crop / (crop - 2 * context_pad) about
    its centre; what falls outside the image becomes zero padding, scaled as the region is.
    """
    x1, y1, x2, y2 = box
    if context_pad <= 0 and not square:
        return (x1, y1, x2, y2), (crop, crop), 0, 0
    context_scale = F32(crop) / F32(crop - 2 * context_pad)
    half_h, half_w = F32((y2 - y1 + 1) / 2.0), F32((x2 - x1 + 1) / 2.0)
    center_x, center_y = F32(x1) + half_w, F32(y1) + half_h
    if square:
        half_h = half_w = max(half_h, half_w)
    x1, x2 = c_round(center_x - half_w * context_scale), c_round(center_x + half_w * context_scale)
    y1, y2 = c_round(center_y - half_h * context_scale), c_round(center_y + half_h * context_scale)
    unclipped_h, unclipped_w = y2 - y1 + 1, x2 - x1 + 1
    pad_x1, pad_y1 = max(0, -x1), max(0, -y1)
    pad_x2, pad_y2 = max(0, x2 - image_width + 1), max(0, y2 - image_height + 1)
    x1, x2, y1, y2 = x1 + pad_x1, x2 - pad_x2, y1 + pad_y1, y2 - pad_y2
    scale_x, scale_y = F32(crop) / F32(unclipped_w), F32(crop) / F32(unclipped_h)
    width, height = c_round(F32(x2 - x1 + 1) * scale_x), c_round(F32(y2 - y1 + 1) * scale_y)
    pad_x1, pad_x2 = c_round(F32(pad_x1) * scale_x), c_round(F32(pad_x2) * scale_x)
    pad_h = c_round(F32(pad_y1) * scale_y)
    pad_w = pad_x2 if mirror else pad_x1          # mirrored, the padding is mirrored too
    # Rounding may overshoot the crop by a pixel: trim the region.
    height, width = min(height, crop - pad_h), min(width, crop - pad_w)
    return (x1, y1, x2, y2), (width, height), pad_w, pad_h


def _tokens(path):
    refuse_special(path, "a window file")
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for number, line in enumerate(f, 1):
            for token in line.split():
                yield token, number


def read_window_file(path, root_folder, fg_threshold, bg_threshold):
    """({image index: image path}, foreground windows, background windows), windows as
    (image index, label, overlap, x1, y1, x2, y2); NetspecError `path:line: ...` on bad records."""
    try:
        tokens = _tokens(path)
        images, fg, bg = {}, [], []
        last_line = 0

        def take(kind, what):
            nonlocal last_line
            try:
                token, last_line = next(tokens)
            except StopIteration:
                raise NetspecError(f"{path}:{last_line}: the file ends where {what} should follow") from None
            try:
                return kind(token)
            except ValueError:
                raise NetspecError(f"{path}:{last_line}: expected {what}, got '{token}'") from None

        for hashtag, last_line in tokens:
            if hashtag != "#":
                raise NetspecError(f"{path}:{last_line}: expected '#' starting an image record, got '{hashtag}'")
            index = take(int, "the image index after '#'")
            if index in images:
                raise NetspecError(f"{path}:{last_line}: image index {index} appears twice")
            images[index] = root_folder + take(str, "the image path")
            for what in ("channels", "height", "width"):
                take(int, f"the image's {what}")
            for _ in range(take(int, "the number of windows")):
                label = take(int, "a window's class index")
                overlap = take(float, "a window's overlap")
                box = tuple(take(int, f"a window's {c}") for c in ("x1", "y1", "x2", "y2"))
                if box[2] < box[0] or box[3] < box[1]:
                    raise NetspecError(f"{path}:{last_line}: window {box} has x2 < x1 or y2 < y1")
                if overlap >= fg_threshold:
                    if label <= 0:
                        raise NetspecError(f"{path}:{last_line}: foreground window (overlap {overlap:g} >= "
                                           f"fg_threshold {fg_threshold:g}) has class {label}; classes of "
                                           "objects start at 1 (0 is background)")
                    fg.append((index, label, overlap) + box)
                elif overlap < bg_threshold:
                    bg.append((index, 0, 0.0) + box)
    except OSError as e:
        raise NetspecError(f"cannot read window file '{path}' ({e.strerror})") from None
    if not images:
        raise NetspecError(f"{path}: the window file is empty")
    return images, fg, bg


@register("WindowData")
class WindowData(Layer):
    """Caffe's WindowDataLayer (see the module docstring); batches made in a background thread."""
    num_bottoms = 0
    num_tops = 2
    is_data = True

    def setup(self, bottom, top):
        p, t = self.layer_param.window_data_param, self.layer_param.transform_param
        if p.crop_mode not in ("warp", "square"):
            raise self.error(f"crop_mode '{p.crop_mode}' is not one of warp, square")
        if t.crop_size <= 0:
            raise self.error("WindowData needs transform_param { crop_size } (the warped window's size)")
        if p.batch_size <= 0:
            raise self.error("window_data_param batch_size must be positive")
        if 2 * p.context_pad >= t.crop_size:
            raise self.error(f"context_pad {p.context_pad} leaves nothing of the {t.crop_size}-pixel crop")
        self.crop, self.batch_size = t.crop_size, p.batch_size
        self.square, self.mirror, self.scale, self.context_pad = p.crop_mode == "square", t.mirror, t.scale, p.context_pad
        try:
            self.images, self.fg, self.bg = read_window_file(p.source, p.root_folder, p.fg_threshold,
                                                             p.bg_threshold)
        except NetspecError as e:
            raise self.error(str(e)) from None
        self.num_fg = int(F32(self.batch_size) * F32(p.fg_fraction))
        for windows, count, kind, rule in ((self.fg, self.num_fg, "foreground", f">= fg_threshold {p.fg_threshold:g}"),
                                           (self.bg, self.batch_size - self.num_fg, "background",
                                            f"< bg_threshold {p.bg_threshold:g}")):
            if count and not windows:
                raise self.error(f"{p.source}: no {kind} windows (overlap {rule}), but each batch takes {count}")
        for index, label, *_ in self.fg + self.bg:
            if index not in self.images:
                raise self.error(f"{p.source}: a window names image index {index}, which has no record")
        for path in self.images.values():
            if not os.path.isfile(path):
                raise self.error(f"{p.source}: image '{path}' does not exist"
                                 + (" (root_folder is joined to it as written: end it with '/')"
                                    if p.root_folder and not p.root_folder.endswith("/") else ""))
        self.cache = {}
        if p.cache_images:               # the files' bytes, as Caffe keeps encoded Datums
            for index, path in self.images.items():
                with open(path, "rb") as f:
                    self.cache[index] = f.read()
        self._set_mean(t)
        self._log_classes(p)
        self.rng = np.random.default_rng(int(get_rng().integers(2 ** 63)))
        self.out_shape = (self.batch_size, 3, self.crop, self.crop)
        self._consumed = self.rng.bit_generator.state
        self._prefetcher = _Prefetcher(self._next_batch, PREFETCH_DEPTH)

    def _set_mean(self, t):
        self.mean, self.mean_values = None, np.asarray(t.mean_value, F32)
        if t.mean_file and len(t.mean_value):
            raise self.error("transform_param sets both mean_file and mean_value; use one")
        if len(self.mean_values) not in (0, 1, 3):
            raise self.error(f"{len(self.mean_values)} mean_value entries for 3 channels (give 1 or 3)")
        if t.mean_file:
            from ..datasets.image_mean import load_mean_binaryproto
            try:
                self.mean = load_mean_binaryproto(t.mean_file).astype(F32)
            except NetspecError as e:
                raise self.error(str(e)) from None
            c, h, w = self.mean.shape
            # Caffe reads the mean at the centre crop, offset (width - crop) / 2 on both axes.
            self.mean_offset = (w - self.crop) // 2
            if c != 3 or w < self.crop or self.mean_offset + self.crop > h:
                raise self.error(f"mean_file {t.mean_file} has shape {self.mean.shape}; WindowData needs 3 "
                                 f"channels and a centre {self.crop}x{self.crop} crop")

    def _log_classes(self, p):
        glog.info(f"Number of images: {len(self.images)}", "window_data_layer.cpp:152")
        counts = {0: len(self.bg)}
        for window in self.fg:
            counts[window[1]] = counts.get(window[1], 0) + 1
        for label in sorted(counts):
            glog.info(f"class {label} has {counts[label]} samples", "window_data_layer.cpp:156")
        glog.info(f"Amount of context padding: {p.context_pad}", "window_data_layer.cpp:160")
        glog.info(f"Crop mode: {p.crop_mode}", "window_data_layer.cpp:163")

    def _draw(self):
        """Caffe's PrefetchRand(): an unsigned 32-bit draw."""
        return int(self.rng.integers(0, 2 ** 32))

    def _image(self, index):
        if index in self.cache:
            return decode_image(self.cache[index], color=True, where=self.images[index])
        try:
            return read_image(self.images[index], color=True)
        except NetspecError as e:
            raise self.error(str(e)) from None

    def _next_batch(self):
        """One batch: background windows first, then foreground ones (runs in the prefetch thread)."""
        data = np.zeros(self.out_shape, F32)
        labels = np.empty(self.batch_size, F32)
        item = 0
        for windows, count in ((self.bg, self.batch_size - self.num_fg), (self.fg, self.num_fg)):
            for _ in range(count):
                window = windows[self._draw() % len(windows)]
                mirror = self.mirror and self._draw() % 2 == 1
                self._warp_into(window, mirror, data[item])
                labels[item] = window[1]
                item += 1
        return data, labels, self.rng.bit_generator.state

    def _warp_into(self, window, mirror, out):
        index, box = window[0], window[3:]
        image = self._image(index)
        _, height, width = image.shape
        (x1, y1, x2, y2), (w, h), pad_w, pad_h = warp_geometry(box, width, height, self.crop, self.context_pad,
                                                               self.square, mirror)
        if x1 < 0 or y1 < 0 or x2 >= width or y2 >= height or x2 < x1 or y2 < y1:
            raise self.error(f"window {tuple(box)} does not fit image {self.images[index]} ({width}x{height})")
        if w <= 0 or h <= 0:
            return
        region = resize_linear(np.ascontiguousarray(image[:, y1:y2 + 1, x1:x2 + 1]), h, w)
        pixels = (region[:, :, ::-1] if mirror else region).astype(F32)
        if self.mean is not None:
            top, left = self.mean_offset + pad_h, self.mean_offset + pad_w
            pixels -= self.mean[:, top:top + h, left:left + w]
        elif len(self.mean_values):
            pixels -= self.mean_values.reshape(-1, 1, 1) if len(self.mean_values) > 1 else self.mean_values[0]
        out[:, pad_h:pad_h + h, pad_w:pad_w + w] = pixels * F32(self.scale)

    def reshape(self, bottom, top):
        top[0].reshape(self.out_shape)
        top[1].reshape((self.batch_size,))

    def forward(self, bottom, top):
        data, labels, state = self._prefetcher.get()
        top[0].data[...] = data
        top[1].data[...] = labels
        self._consumed = state

    def get_resume_state(self):
        return {"rng": self._consumed}

    def set_resume_state(self, state):
        self._prefetcher.stop()
        self.rng.bit_generator.state = state["rng"]
        self._consumed = self.rng.bit_generator.state
        self._prefetcher = _Prefetcher(self._next_batch, PREFETCH_DEPTH)

    def close(self):
        prefetcher = getattr(self, "_prefetcher", None)
        if prefetcher is not None:
            prefetcher.stop()
