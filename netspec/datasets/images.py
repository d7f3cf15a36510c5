"""Images as Caffe sees them through OpenCV: decoded to BGR channel-major uint8, grey as OpenCV makes
it, resized with cv::resize's bilinear arithmetic, and encoded for Datums.

Caffe decodes with cv::imread/cv::imdecode. Pillow bundles the same libjpeg-turbo, so JPEG pixels are
libjpeg's own; what OpenCV adds on top (grey conversions, 16-bit PNGs, resizing) is reproduced here.
"""
import io
import os

import numpy as np

from ..errors import NetspecError
from ..reading import check_regular

GREY_MODES = {"1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
RESIZE_COEF_BITS = 11                     # OpenCV's INTER_RESIZE_COEF_BITS: weights are k / 2048
ENCODE_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "bmp": "BMP", "tif": "TIFF", "tiff": "TIFF"}
JPEG_QUALITY = 95                         # cv::imencode's default (IMWRITE_JPEG_QUALITY)


def decode_threads():
    """Threads that decode images in parallel: one per core this process may use (Pillow's
    decoders release the GIL), at most 4, so that decoding keeps ahead of a training iteration."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise NetspecError("reading images needs Pillow: pip install pillow") from None
    return Image


def decode_image(data, color=None, where="image"):
    """(C, H, W) uint8, BGR, from encoded bytes, as cv::imdecode: `color` None keeps the file's own
    kind (1 channel for grey files, 3 otherwise: IMREAD_ANYCOLOR), True gives 3, False gives 1."""
    Image = _pillow()
    from PIL import UnidentifiedImageError
    try:
        img = Image.open(io.BytesIO(data))
        if color is False and img.format == "JPEG" and img.mode in ("RGB", "YCbCr"):
            img.draft("L", None)          # libjpeg's own grey output (the Y plane), as OpenCV asks for
        img.load()
    except UnidentifiedImageError:
        raise NetspecError(f"{where}: cannot decode the image: its {len(data)} bytes are not in an image "
                           "format Pillow reads (JPEG, PNG, BMP, ...)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise NetspecError(f"{where}: cannot decode the image ({e})") from None
    return _caffe_layout(img, color)


def read_image(path, color=True, height=0, width=0):
    """Caffe's ReadImageToCVMat: the file decoded (colour or grey), resized when height and width are set."""
    if os.path.exists(path) and not os.path.isfile(path):
        check_regular(path, "an image")         # a FIFO or device would block or never end
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise NetspecError(f"{path}: {e.strerror}") from None
    image = decode_image(data, color, where=os.fspath(path))
    if height > 0 and width > 0:
        image = resize_linear(image, height, width)
    return image


def _eight_bit(img):
    """16-bit grey files keep their high byte, as OpenCV's 8-bit reads do."""
    if img.mode in GREY_MODES - {"1", "L"}:
        return np.right_shift(np.asarray(img, np.int64), 8).clip(0, 255).astype(np.uint8)
    return np.asarray(img.convert("L"), np.uint8)


def _caffe_layout(img, color):
    grey_file = img.mode in GREY_MODES
    if color is None:
        color = not grey_file
    if color:
        rgb = np.asarray(img.convert("RGB") if not grey_file else _eight_bit(img))
        if rgb.ndim == 2:                  # grey file read as colour: the value in all three channels
            return np.repeat(rgb[None], 3, axis=0)
        return np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1))
    if grey_file:
        return _eight_bit(img)[None]
    if img.mode == "LA":                   # grey with alpha: the alpha is dropped
        return np.asarray(img.getchannel("L"))[None]
    rgb = np.asarray(img.convert("RGB")).astype(np.int32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if img.format == "PNG":
        # libpng's png_set_rgb_to_gray(0.299, 0.587): 15-bit coefficients, truncated; grey stays.
        grey = (r * 9797 + g * 19234 + b * 3737) >> 15
        grey = np.where((r == g) & (g == b), r, grey)
    else:
        # OpenCV's cvtColor(BGR2GRAY) for its own decoders: 14-bit coefficients, rounded.
        grey = (r * 4899 + g * 9617 + b * 1868 + (1 << 13)) >> 14
    return grey.astype(np.uint8)[None]


def _linear_taps(src, dst):
    """For each output index: the two source indices and their 11-bit weights, as cv::resize computes
    them for INTER_LINEAR: centres aligned ((d + 0.5) * scale - 0.5, in float), clamped at the edges."""
    scale = 1.0 / (dst / src)
    f = ((np.arange(dst) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = f - s.astype(np.float32)
    outside = (s < 0) | (s >= src - 1)
    f[outside] = 0
    s = np.clip(s, 0, src - 1)
    one = np.float32(1 << RESIZE_COEF_BITS)
    w0 = np.rint((np.float32(1) - f) * one).astype(np.int32)     # cvRound: half to even
    w1 = np.rint(f * one).astype(np.int32)
    return s, np.minimum(s + 1, src - 1), w0, w1


def resize_linear(image, height, width):
    """cv::resize(INTER_LINEAR) of a (C, H, W) uint8 image to (C, height, width).

    Rows are first blended across columns into integers scaled by 2048, then across rows
    (scale 2048 * 2048), rounded by adding half and shifting right 22 bits. Shrinking uses the
    same two taps (no area filter), as OpenCV's bilinear does.
    """
    c, h, w = image.shape
    if (h, w) == (height, width):
        return image
    xs0, xs1, a0, a1 = _linear_taps(w, width)
    ys0, ys1, b0, b1 = _linear_taps(h, height)
    src = image.astype(np.int32)
    rows = src[:, :, xs0] * a0 + src[:, :, xs1] * a1                         # (C, H, width)
    out = rows[:, ys0] * b0[:, None] + rows[:, ys1] * b1[:, None]             # (C, height, width)
    shift = 2 * RESIZE_COEF_BITS
    return ((out + (1 << (shift - 1))) >> shift).clip(0, 255).astype(np.uint8)


def encode_image(image, encoding):
    """Encoded bytes of a (C, H, W) uint8 BGR image, as cv::imencode('.' + encoding) writes them."""
    fmt = ENCODE_FORMATS.get(encoding.lower())
    if fmt is None:
        raise NetspecError(f"cannot encode images as '{encoding}' (use one of: "
                           f"{', '.join(sorted(ENCODE_FORMATS))})")
    Image = _pillow()
    pixels = image[0] if image.shape[0] == 1 else image[::-1].transpose(1, 2, 0)
    out = io.BytesIO()
    options = {"quality": JPEG_QUALITY} if fmt == "JPEG" else {}
    Image.fromarray(np.ascontiguousarray(pixels)).save(out, fmt, **options)
    return out.getvalue()
