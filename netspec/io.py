"""pycaffe's caffe.io: arrays <-> BlobProto/Datum, images, and deploy-time preprocessing.

    transformer = netspec.io.Transformer({'data': net.blobs['data'].data.shape})
    transformer.set_transpose('data', (2, 0, 1))      # H x W x K image -> K x H x W
    transformer.set_channel_swap('data', (2, 1, 0))   # RGB -> BGR
    transformer.set_raw_scale('data', 255)            # [0, 1] -> [0, 255]
    transformer.set_mean('data', mean_bgr)
    net.blobs['data'].data[0] = transformer.preprocess('data', netspec.io.load_image(path))

Arrays come back float32 (pycaffe gives float64 for float data). Images are read
with matplotlib when it is installed (PNG natively, other formats through
Pillow); resizing is plain numpy interpolation, so no image library is needed.
"""
import os

import numpy as np
from google.protobuf.message import DecodeError

from .datasets.lmdb_io import array_to_datum, datum_to_array  # noqa: F401  (part of caffe.io)
from .errors import NetspecError
from .proto import caffe_pb2
from .weights import array_to_blob, blob_to_array

# ITU-R 709 luma weights, what skimage's rgb2gray (and so pycaffe's load_image(color=False)) uses.
_GRAY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721], np.float32)


# ------------------------------------------------------------------ BlobProto

class BlobShapeError(NetspecError, ValueError):
    """A BlobProto whose values do not fit its shape (pycaffe raises ValueError)."""


def blobproto_to_array(blob, return_diff=False):
    """The blob's data (or diff) as an array of the blob's shape (legacy 4-D shapes too).

    As in pycaffe, a blob with neither `shape` nor num/channels/height/width is a
    scalar: one value is returned as a 0-d array, more are an error.
    """
    if not blob.HasField("shape") and not any((blob.num, blob.channels, blob.height, blob.width)):
        values = np.asarray((blob.double_diff or blob.diff) if return_diff else (blob.double_data or blob.data),
                            dtype=np.float32)
        if values.size != 1:
            raise BlobShapeError(f"BlobProto has {values.size} values but no shape (neither shape.dim nor "
                                 "num/channels/height/width), so it is a scalar")
        return values.reshape(())
    try:
        return blob_to_array(blob, diff=return_diff)
    except NetspecError as e:
        raise BlobShapeError(str(e)) from None


def array_to_blobproto(arr, diff=None):
    """A BlobProto holding `arr` (and `diff`, which must have the same size)."""
    arr = np.asarray(arr)
    if diff is not None and np.size(diff) != arr.size:
        raise NetspecError(f"array_to_blobproto: diff has {np.size(diff)} values, the array {arr.size}")
    return array_to_blob(arr, caffe_pb2.BlobProto(), diff)


def arraylist_to_blobprotovector_str(arraylist):
    """Serialized BlobProtoVector bytes holding the arrays in order."""
    vec = caffe_pb2.BlobProtoVector()
    for arr in arraylist:
        vec.blobs.add().CopyFrom(array_to_blobproto(arr))
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(data):
    vec = caffe_pb2.BlobProtoVector()
    try:
        vec.ParseFromString(bytes(data))
    except DecodeError as e:
        raise NetspecError(f"not a serialized BlobProtoVector ({e})") from None
    return [blobproto_to_array(blob) for blob in vec.blobs]


# ------------------------------------------------------------------ images

def load_image(filename, color=True):
    """An H x W x 3 (color) or H x W x 1 float32 image in [0, 1], as pycaffe's load_image."""
    filename = os.fspath(filename)
    try:
        import matplotlib.image as mpimg
    except ImportError:
        raise NetspecError(f"{filename}: reading images needs an image library; install matplotlib "
                           "(pip install matplotlib)") from None
    if not os.path.isfile(filename):
        raise NetspecError(f"{filename}: no such file")
    try:
        img = mpimg.imread(filename)
    except Exception as e:  # matplotlib/Pillow raise many types for unreadable files
        reason = " ".join(str(e).split())
        raise NetspecError(f"{filename}: cannot read the image ({type(e).__name__}: {reason}); "
                           "PNG is read by matplotlib, other formats need Pillow") from None
    img = np.asarray(img)
    if np.issubdtype(img.dtype, np.integer):
        img = img.astype(np.float32) / np.iinfo(img.dtype).max
    img = img.astype(np.float32, copy=False)
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]                      # drop alpha
    if img.ndim == 3 and img.shape[2] == 2:
        img = img[:, :, :1]                      # gray + alpha
    if not color and img.ndim == 3 and img.shape[2] == 3:
        img = img @ _GRAY_WEIGHTS
    if img.ndim == 2:
        img = img[:, :, np.newaxis]
    if color and img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img)


def _source_coords(n_out, n_in, interp_order):
    # Pixel centres line up: output pixel i covers input [(i) * s, (i + 1) * s) with s = n_in / n_out.
    centres = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out)
    if interp_order == 0:
        return np.minimum(np.floor(centres).astype(np.intp), n_in - 1), None, None
    pos = np.clip(centres - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (pos - lo).astype(np.float32)


def resize_image(im, new_dims, interp_order=1):
    """Resize an H x W x K image to new_dims (height, width): nearest (0) or bilinear (1).

    Bilinear samples at aligned pixel centres and clamps at the borders; it does not
    low-pass before shrinking (skimage does), so large downscales alias slightly more.
    """
    im = np.asarray(im, dtype=np.float32)
    if im.ndim != 3:
        raise NetspecError(f"resize_image needs an H x W x K image; got shape {im.shape}")
    new_h, new_w = (int(d) for d in new_dims)
    if new_h <= 0 or new_w <= 0:
        raise NetspecError(f"resize_image: new size {tuple(new_dims)} must be positive")
    if interp_order not in (0, 1):
        raise NetspecError(f"resize_image: interp_order {interp_order} is not supported (0 nearest, 1 bilinear)")
    ys, ys_hi, wy = _source_coords(new_h, im.shape[0], interp_order)
    xs, xs_hi, wx = _source_coords(new_w, im.shape[1], interp_order)
    if interp_order == 0:
        return np.ascontiguousarray(im[ys][:, xs])
    rows = im[ys] * (1 - wy)[:, None, None] + im[ys_hi] * wy[:, None, None]
    out = rows[:, xs] * (1 - wx)[None, :, None] + rows[:, xs_hi] * wx[None, :, None]
    return out.astype(np.float32, copy=False)


def oversample(images, crop_dims):
    """Ten crops per H x W x K image: four corners and the centre, then the same mirrored."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise NetspecError(f"oversample needs a list of H x W x K images; got shape {images.shape}")
    h, w = images.shape[1:3]
    ch, cw = (int(d) for d in crop_dims)
    if ch > h or cw > w:
        raise NetspecError(f"oversample: crop {ch}x{cw} is larger than the images ({h}x{w})")
    cy, cx = int(h / 2.0 - ch / 2.0), int(w / 2.0 - cw / 2.0)
    corners = [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw), (cy, cx)]
    crops = np.stack([images[:, y:y + ch, x:x + cw] for y, x in corners], axis=1)
    crops = np.concatenate([crops, crops[:, :, :, ::-1]], axis=1)      # N x 10 x ch x cw x K
    return np.ascontiguousarray(crops.reshape(-1, ch, cw, images.shape[3]))


# ------------------------------------------------------------------ Transformer

class Transformer:
    """Turns an H x W x K image into a net input (K x H x W), in pycaffe's order:
    float32, resize to the input's H x W, transpose, channel swap, raw scale,
    subtract mean, input scale. `deprocess` undoes the steps in reverse."""

    def __init__(self, inputs):
        self.inputs = {name: tuple(int(d) for d in shape) for name, shape in inputs.items()}
        self.transpose, self.channel_swap = {}, {}
        self.raw_scale, self.mean, self.input_scale = {}, {}, {}

    def _check_input(self, in_):
        if in_ not in self.inputs:
            raise NetspecError(f"'{in_}' is not one of the net inputs: {', '.join(self.inputs) or '(none)'}")
        return self.inputs[in_]

    def set_transpose(self, in_, order):
        """Axis order taking the data to K x H x W, e.g. (2, 0, 1) for an H x W x K image."""
        shape = self._check_input(in_)
        order = tuple(int(i) for i in order)
        if len(order) != len(shape) - 1 or sorted(order) != list(range(len(order))):
            raise NetspecError(f"set_transpose('{in_}', {order}): needs a permutation of "
                               f"{len(shape) - 1} axes for input shape {shape}")
        self.transpose[in_] = order

    def set_channel_swap(self, in_, order):
        """Channel order after transposing, e.g. (2, 1, 0) for RGB -> BGR."""
        shape = self._check_input(in_)
        order = tuple(int(i) for i in order)
        if len(order) != shape[1]:
            raise NetspecError(f"set_channel_swap('{in_}', {order}): needs {shape[1]} channels "
                               f"for input shape {shape}")
        self.channel_swap[in_] = order

    def set_raw_scale(self, in_, scale):
        """Factor applied before the mean, e.g. 255 when images are [0, 1] and the model wants [0, 255]."""
        self._check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean):
        """Per-channel mean (K,) or per-pixel mean (K x H x W, or H x W for one channel)."""
        shape = self._check_input(in_)
        mean = np.asarray(mean, dtype=np.float32)
        if mean.ndim == 1:
            if mean.shape[0] != shape[1]:
                raise NetspecError(f"set_mean('{in_}'): mean has {mean.shape[0]} channels, "
                                   f"the input has {shape[1]} (shape {shape})")
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            if mean.ndim == 2:
                mean = mean[np.newaxis]
            if mean.shape != shape[1:]:
                raise NetspecError(f"set_mean('{in_}'): mean shape {mean.shape} does not match "
                                   f"the input's {shape[1:]}")
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale):
        """Factor applied after the mean, e.g. 1/std."""
        self._check_input(in_)
        self.input_scale[in_] = scale

    def preprocess(self, in_, data):
        shape = self._check_input(in_)
        out = np.array(data, dtype=np.float32)          # a copy: the caller's image is left alone
        if out.ndim != len(shape) - 1:
            raise NetspecError(f"preprocess('{in_}'): expected one {len(shape) - 1}-D image (H x W x K), "
                               f"got shape {out.shape}")
        in_dims = shape[2:]
        if out.shape[:2] != in_dims:
            out = resize_image(out, in_dims)
        if in_ in self.transpose:
            out = out.transpose(self.transpose[in_])
        if in_ in self.channel_swap:
            out = out[list(self.channel_swap[in_])]
        if in_ in self.raw_scale:
            out = out * np.float32(self.raw_scale[in_])
        if in_ in self.mean:
            out = out - self.mean[in_]
        if in_ in self.input_scale:
            out = out * np.float32(self.input_scale[in_])
        return np.ascontiguousarray(out, dtype=np.float32)

    def deprocess(self, in_, data):
        """A net input (K x H x W, or 1 x K x H x W) back to the image it came from."""
        self._check_input(in_)
        out = np.array(data, dtype=np.float32).squeeze()
        if in_ in self.input_scale:
            out = out / np.float32(self.input_scale[in_])
        if in_ in self.mean:
            out = out + self.mean[in_]
        if in_ in self.raw_scale:
            out = out / np.float32(self.raw_scale[in_])
        if in_ in self.channel_swap:
            out = out[list(np.argsort(self.channel_swap[in_]))]
        if in_ in self.transpose:
            out = out.transpose(np.argsort(self.transpose[in_]))
        return out
