"""DenseImageData (SegNet's data layer, alexgkendall/caffe-segnet): image and label-image pairs.

The source lists `image label` per line (paths after root_folder). Tops: data (N, C, H, W),
transformed as ImageData's (mean, scale; no crop or mirror: the label would not follow, so
the fork refuses them too), and label (N, 1, H, W), the label image's grey values as read.
new_height/new_width resize both with cv::resize's rules (the image bilinear, the label nearest).
With batch_size 1 and no resize, the tops take each image's own size, as the fork's single-image
mode does.
"""
import os

import numpy as np

from ..datasets.images import read_image, resize_linear, resize_nearest
from ..reading import refuse_special
from ..rng import get_rng
from ..transform import DataTransformer
from .base import Layer, register


def read_pair_image(path, color, size, nearest):
    """(C, H, W) uint8 as the fork's ReadImageToCVMat reads it (cv::imread, colour as BGR), resized to
    size (h, w) when given: cv::resize INTER_LINEAR for images, INTER_NEAREST for labels."""
    image = read_image(path, color)
    if not size:
        return image
    return resize_nearest(image, *size) if nearest else resize_linear(image, *size)


@register("DenseImageData")
class DenseImageData(Layer):
    num_bottoms = 0
    num_tops = 2
    is_data = True

    def setup(self, bottom, top):
        p = self.layer_param.dense_image_data_param
        t = self.layer_param.transform_param
        if t.crop_size or t.mirror:
            raise self.error("crop_size and mirror are not supported: the label image would not be "
                             "cropped or mirrored with the image (the fork refuses them too)")
        if bool(p.new_height) != bool(p.new_width):
            raise self.error("give new_height and new_width together (or neither)")
        if p.batch_size < 1:
            raise self.error("dense_image_data_param.batch_size must be positive")
        self.size = (p.new_height, p.new_width) if p.new_height else None
        self.color = p.is_color
        refuse_special(p.source, "an image list")
        try:
            with open(p.source) as f:
                lines = [(n, line.split()) for n, line in enumerate(f, 1) if line.strip()]
        except OSError as e:
            raise self.error(f"cannot read image list {p.source}: {e.strerror}") from None
        for n, fields in lines:
            if len(fields) != 2:
                raise self.error(f"{p.source}:{n}: expected `image label` (two paths), got {len(fields)} field(s)")
        if not lines:
            raise self.error(f"image list {p.source} is empty")
        self.items = [tuple(os.path.join(p.root_folder, name) if p.root_folder else name for name in fields)
                      for _, fields in lines]
        self.rng = np.random.default_rng(int(get_rng().integers(2 ** 63)))
        if p.shuffle:
            self.rng.shuffle(self.items)
        self.pos = int(get_rng().integers(p.rand_skip)) % len(self.items) if p.rand_skip else 0
        self.transformer = DataTransformer(t, self.phase, seed=int(get_rng().integers(2 ** 63)),
                                       where=f"layer '{self.name}' ({self.type})")
        # One image per batch at its own size when nothing fixes the size (the fork's single-image mode).
        self.own_size = p.batch_size == 1 and self.size is None
        self.batch = self._read(p.batch_size)
        if not self.own_size:
            self.transformer.check(*self.batch[0].shape[1:])

    def _read(self, count):
        images, labels = [], []
        for _ in range(count):
            image_path, label_path = self.items[self.pos]
            image = read_pair_image(image_path, self.color, self.size, nearest=False)
            label = read_pair_image(label_path, False, self.size, nearest=True)
            if label.shape[1:] != image.shape[1:]:
                raise self.error(f"label {label_path} is {label.shape[1]}x{label.shape[2]}, image {image_path} "
                                 f"is {image.shape[1]}x{image.shape[2]} (they must match)")
            if images and image.shape != images[0].shape:
                raise self.error(f"image {image_path} has shape {image.shape}, the batch's first has "
                                 f"{images[0].shape} (set new_height and new_width to resize)")
            images.append(image)
            labels.append(label)
            self.pos += 1
            if self.pos == len(self.items):
                self.pos = 0
                if self.layer_param.dense_image_data_param.shuffle:
                    self.rng.shuffle(self.items)
        return np.stack(images), np.stack(labels)

    def reshape(self, bottom, top):
        images, labels = self.batch
        top[0].reshape(images.shape)
        top[1].reshape(labels.shape)

    def forward(self, bottom, top):
        images, labels = self.batch
        if self.own_size:
            self.transformer.check(*images.shape[1:])
        self.transformer(images, top[0].data)
        top[1].data[...] = labels
        self.batch = self._read(len(images))
