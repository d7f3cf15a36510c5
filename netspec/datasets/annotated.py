"""SSD's annotated images (weiliu89/caffe): AnnotatedDatum records and their augmentation.

An image is an (H, W, C) uint8 array in the Datum's channel order (BGR for Caffe's
LMDBs); its boxes are groups [(group label, [(instance id, box, difficult)])] with
boxes normalised [xmin, ymin, xmax, ymax]. Every step that moves the image window
(expansion, a sampled crop, the final crop and mirror) projects the boxes into the
new window, drops the ones outside (or failing transform_param.emit_constraint) and
groups left empty, as the fork's TransformAnnotation does.
"""
import numpy as np
from google.protobuf.message import DecodeError

from .. import bbox
from ..errors import NetspecError
from ..proto import caffe_pb2
from .lmdb_io import datum_to_array

UNIT = np.array([0, 0, 1, 1], np.float32)


def parse_annotated(value, where, color=None):
    """(image (H, W, C) uint8, groups, annotation type or None, Datum label) of one AnnotatedDatum record.

    Encoded images are decoded (`color`: True 3 channels, False grey, None as stored)."""
    record = caffe_pb2.AnnotatedDatum()
    try:
        record.ParseFromString(value)
    except DecodeError:
        raise NetspecError(f"{where} is not a serialized AnnotatedDatum") from None
    if not record.HasField("datum"):
        raise NetspecError(f"{where} is not an AnnotatedDatum (it has no datum; a plain Datum LMDB "
                           "is read by a Data layer)")
    pixels = datum_to_array(record.datum, where, color)
    if pixels.dtype != np.uint8:
        raise NetspecError(f"{where}: AnnotatedData reads uint8 images, the Datum holds float_data")
    groups = [(g.group_label, [(a.instance_id, np.array([a.bbox.xmin, a.bbox.ymin, a.bbox.xmax, a.bbox.ymax],
                                                        np.float32), a.bbox.difficult) for a in g.annotation])
              for g in record.annotation_group]
    kind = record.type if record.HasField("type") else None
    return pixels.transpose(1, 2, 0), groups, kind, record.datum.label


# ---------------------------------------------------------------- boxes

def project(window, box):
    """`box` in the coordinates of `window` (both normalised), clipped to it; None when outside (ProjectBBox)."""
    if box[0] >= window[2] or box[2] <= window[0] or box[1] >= window[3] or box[3] <= window[1]:
        return None
    size = np.tile(window[2:] - window[:2], 2)
    out = np.clip((box - np.tile(window[:2], 2)) / size, 0, 1).astype(np.float32)
    return out if bbox.box_size(out) > 0 else None


def emitted(window, box, constraint):
    """Whether a box survives a window (EmitConstraint: its centre inside, or covered enough)."""
    if constraint is None:
        return True
    if constraint.emit_type == caffe_pb2.EmitConstraint.CENTER:
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        return window[0] <= cx <= window[2] and window[1] <= cy <= window[3]
    return float(bbox.coverage(box, window)) > constraint.emit_overlap


def move_boxes(groups, window, constraint, mirror=False):
    """The fork's TransformAnnotation: the boxes seen through `window`, flipped if mirror."""
    out = []
    for label, annotations in groups:
        kept = []
        for instance, box, difficult in annotations:
            if not emitted(window, box, constraint):
                continue
            moved = project(window, box)
            if moved is None:
                continue
            if mirror:
                moved = np.array([1 - moved[2], moved[1], 1 - moved[0], moved[3]], np.float32)
            kept.append((instance, moved, difficult))
        if kept:
            out.append((label, kept))
    return out


def all_boxes(groups):
    return np.array([box for _, annotations in groups for _, box, _ in annotations], np.float32).reshape(-1, 4)


# ---------------------------------------------------------------- batch samplers

def sample_box(sampler, rng):
    """One random box of the sampler's scale and aspect ratio inside the unit square (SampleBBox)."""
    scale = rng.uniform(sampler.min_scale, sampler.max_scale)
    low = max(sampler.min_aspect_ratio, scale ** 2)
    high = min(sampler.max_aspect_ratio, 1 / scale ** 2)
    ratio = rng.uniform(low, high)
    w, h = scale * np.sqrt(ratio), scale / np.sqrt(ratio)
    x, y = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
    return np.array([x, y, x + w, y + h], np.float32)


def satisfies(box, objects, c):
    """SatisfySampleConstraint: some object meets every bound the constraint sets (none set: true)."""
    tests = []
    if c.HasField("min_jaccard_overlap") or c.HasField("max_jaccard_overlap"):
        tests.append((bbox.jaccard(box[None], objects)[0], "jaccard_overlap"))
    if c.HasField("min_sample_coverage") or c.HasField("max_sample_coverage"):
        tests.append((bbox.coverage(np.broadcast_to(box, objects.shape), objects), "sample_coverage"))
    if c.HasField("min_object_coverage") or c.HasField("max_object_coverage"):
        tests.append((bbox.coverage(objects, np.broadcast_to(box, objects.shape)), "object_coverage"))
    if not tests:
        return True
    ok = np.ones(len(objects), bool)
    for values, name in tests:
        if c.HasField("min_" + name):
            ok &= values >= getattr(c, "min_" + name)
        if c.HasField("max_" + name):
            ok &= values <= getattr(c, "max_" + name)
    return bool(ok.any())


def sample_windows(groups, samplers, rng):
    """GenerateBatchSamples: per batch_sampler, up to max_sample boxes meeting its constraint in max_trials."""
    objects = all_boxes(groups)
    found = []
    for s in samplers:
        if not s.use_original_image:
            continue
        count = 0
        for _ in range(s.max_trials):
            if s.HasField("max_sample") and count >= s.max_sample:
                break
            box = sample_box(s.sampler, rng)
            if satisfies(box, objects, s.sample_constraint):
                count += 1
                found.append(box)
    return found


# ---------------------------------------------------------------- image operations

def crop(image, groups, window, constraint):
    """The image inside a normalised window (CropImage), and its boxes."""
    window = np.clip(window, 0, 1)
    h, w = image.shape[:2]
    x0, y0, x1, y1 = window * np.array([w, h, w, h], np.float32)
    left, top = int(x0), int(y0)
    image = image[top:top + int(y1 - y0), left:left + int(x1 - x0)]
    return image, move_boxes(groups, window, constraint)


def expand(image, groups, p, fill, rng, constraint):
    """ExpandImage: with probability p.prob, the image placed at random on a canvas up to
    max_expand_ratio times its size, filled with the mean values."""
    if rng.uniform(0, 1) > p.prob or abs(p.max_expand_ratio - 1) < 1e-2:
        return image, groups
    ratio = rng.uniform(1, p.max_expand_ratio)
    h, w, c = image.shape
    height, width = int(h * ratio), int(w * ratio)
    top, left = np.floor(rng.uniform(0, height - h)), np.floor(rng.uniform(0, width - w))
    canvas = np.empty((height, width, c), np.uint8)
    canvas[...] = fill
    canvas[int(top):int(top) + h, int(left):int(left) + w] = image
    window = np.array([-left / w, -top / h, (width - left) / w, (height - top) / h], np.float32)
    return canvas, move_boxes(groups, window, constraint)


def resize(image, height, width, nearest=False):
    """(height, width) image by bilinear interpolation at pixel centres (OpenCV's INTER_LINEAR), or nearest."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    ys = (np.arange(height) + 0.5) * h / height - 0.5
    xs = (np.arange(width) + 0.5) * w / width - 0.5
    if nearest:
        rows = np.minimum((np.arange(height) * h / height).astype(int), h - 1)
        cols = np.minimum((np.arange(width) * w / width).astype(int), w - 1)
        return image[rows][:, cols]
    y0 = np.clip(np.floor(ys).astype(int), 0, h - 1)
    x0 = np.clip(np.floor(xs).astype(int), 0, w - 1)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy = np.clip(ys - np.floor(ys), 0, 1)[:, None, None]
    fx = np.clip(xs - np.floor(xs), 0, 1)[None, :, None]
    fy = np.where((ys < 0)[:, None, None], 0, fy)
    fx = np.where((xs < 0)[None, :, None], 0, fx)
    img = image.astype(np.float32)
    top = img[y0][:, x0] * (1 - fx) + img[y0][:, x1] * fx
    bottom = img[y1][:, x0] * (1 - fx) + img[y1][:, x1] * fx
    return np.clip(np.rint(top * (1 - fy) + bottom * fy), 0, 255).astype(np.uint8)


def _saturate(x):
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def bgr_to_hsv(image):
    """OpenCV's 8-bit BGR -> HSV: H in [0, 180), S and V in [0, 255]."""
    b, g, r = (image[..., k].astype(np.float32) for k in range(3))
    v = np.maximum(np.maximum(r, g), b)
    spread = v - np.minimum(np.minimum(r, g), b)
    safe = np.where(spread > 0, spread, 1)
    s = np.where(v > 0, spread * 255 / np.where(v > 0, v, 1), 0)
    h = np.where(v == r, 60 * (g - b) / safe, np.where(v == g, 120 + 60 * (b - r) / safe, 240 + 60 * (r - g) / safe))
    h = np.where(spread > 0, h, 0) % 360
    return np.stack([_saturate(h / 2) % 180, _saturate(s), _saturate(v)], axis=-1)


def hsv_to_bgr(hsv):
    h = hsv[..., 0].astype(np.float32) * 2 / 60
    s, v = hsv[..., 1].astype(np.float32) / 255, hsv[..., 2].astype(np.float32)
    sector = np.floor(h).astype(int) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r = np.choose(sector, [v, q, p, p, t, v])
    g = np.choose(sector, [t, v, v, q, p, p])
    b = np.choose(sector, [p, p, t, v, v, q])
    return np.stack([_saturate(b), _saturate(g), _saturate(r)], axis=-1)


def distort(image, p, rng):
    """The fork's ApplyDistort: random brightness, contrast, saturation and hue (each with its
    probability), in one of two orders, then (random_order_prob) a channel shuffle."""
    def brightness(img):
        if rng.uniform(0, 1) < p.brightness_prob:
            return _saturate(img.astype(np.float32) + rng.uniform(-p.brightness_delta, p.brightness_delta))
        return img

    def contrast(img):
        if rng.uniform(0, 1) < p.contrast_prob:
            return _saturate(img.astype(np.float32) * rng.uniform(p.contrast_lower, p.contrast_upper))
        return img

    def hsv_channel(img, prob, channel, draw, apply):
        if img.shape[2] != 3 or rng.uniform(0, 1) >= prob:
            return img
        delta = draw()
        hsv = bgr_to_hsv(img)
        hsv[..., channel] = _saturate(apply(hsv[..., channel].astype(np.float32), delta))
        return hsv_to_bgr(hsv)

    def saturation(img):
        return hsv_channel(img, p.saturation_prob, 1, lambda: rng.uniform(p.saturation_lower, p.saturation_upper),
                           lambda s, d: s * d)

    def hue(img):
        return hsv_channel(img, p.hue_prob, 0, lambda: rng.uniform(-p.hue_delta, p.hue_delta), lambda h, d: h + d)

    steps = (brightness, contrast, saturation, hue) if rng.uniform(0, 1) > 0.5 else (brightness, saturation, hue,
                                                                                      contrast)
    for step in steps:
        image = step(image)
    if image.shape[2] > 1 and rng.uniform(0, 1) < p.random_order_prob:
        image = image[..., rng.permutation(image.shape[2])]
    return image


# ---------------------------------------------------------------- the whole pipeline

class AnnotatedTransformer:
    """One AnnotatedDatum's way to the net: distort, expand, sample a crop, resize, crop,
    mirror, subtract the mean, scale. Random draws come from its own generator (resumable)."""

    def __init__(self, param, samplers, train, seed, where):
        self.p, self.samplers, self.train, self.where = param, list(samplers), train, where
        self.rng = np.random.default_rng(seed)
        if param.mean_file:
            raise NetspecError(f"{where}: AnnotatedData takes mean_value, not mean_file")
        if param.HasField("noise_param") and param.noise_param.prob > 0:
            raise NetspecError(f"{where}: transform_param.noise_param is not supported")
        resize = param.resize_param
        if param.HasField("resize_param") and resize.resize_mode != caffe_pb2.ResizeParameter.WARP:
            raise NetspecError(f"{where}: resize_param resize_mode {caffe_pb2.ResizeParameter.Resize_mode.Name(resize.resize_mode)}"
                               " is not supported (WARP is)")
        self.size = (resize.height, resize.width) if param.HasField("resize_param") else None
        if self.size is not None and 0 in self.size:
            raise NetspecError(f"{where}: resize_param needs height and width")
        self.crop_hw = (param.crop_h, param.crop_w) if param.crop_h and param.crop_w else (
            (param.crop_size, param.crop_size) if param.crop_size else None)
        self.constraint = param.emit_constraint if param.HasField("emit_constraint") else None
        self.mean = np.asarray(param.mean_value, np.float32)

    def output_hw(self, height, width):
        if self.size:
            height, width = self.size
        return self.crop_hw or (height, width)

    def __call__(self, image, groups):
        p, rng = self.p, self.rng
        if p.HasField("distort_param"):
            image = distort(image, p.distort_param, rng)
        if p.HasField("expand_param"):
            fill = _saturate(self.mean) if len(self.mean) else 0
            image, groups = expand(image, groups, p.expand_param, fill, rng, self.constraint)
        if self.samplers:
            windows = sample_windows(groups, self.samplers, rng)
            if windows:
                image, groups = crop(image, groups, windows[int(rng.integers(len(windows)))], self.constraint)
        if self.size:
            modes = list(p.resize_param.interp_mode)
            mode = modes[int(rng.integers(len(modes)))] if modes else caffe_pb2.ResizeParameter.LINEAR
            image = resize(image, *self.size, nearest=mode == caffe_pb2.ResizeParameter.NEAREST)
        h, w = image.shape[:2]
        window = UNIT
        if self.crop_hw:
            ch, cw = self.crop_hw
            if ch > h or cw > w:
                raise NetspecError(f"{self.where}: crop {ch}x{cw} is larger than the {h}x{w} image")
            top = int(rng.integers(h - ch + 1)) if self.train else (h - ch) // 2
            left = int(rng.integers(w - cw + 1)) if self.train else (w - cw) // 2
            image = image[top:top + ch, left:left + cw]
            window = np.array([left / w, top / h, (left + cw) / w, (top + ch) / h], np.float32)
        mirror = bool(p.mirror and self.train and rng.integers(2))
        if mirror:
            image = image[:, ::-1]
        groups = move_boxes(groups, window, self.constraint, mirror)
        out = image.astype(np.float32)
        if len(self.mean):
            out -= self.mean if len(self.mean) > 1 else self.mean[0]
        if p.scale != 1:
            out *= p.scale
        return out.transpose(2, 0, 1), groups

    def get_state(self):
        return self.rng.bit_generator.state

    def set_state(self, state):
        self.rng.bit_generator.state = state
