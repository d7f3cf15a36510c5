"""ImageData: images named in a list file (`path label` per line), read as Caffe reads them with OpenCV."""
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..datasets.images import decode_threads, read_image
from ..datasets.imageset import read_image_list
from ..errors import NetspecError
from ..rng import get_rng
from ..transform import DataTransformer
from .base import Layer, register
from .data import _Prefetcher, transform_images


@register("ImageData")
class ImageData(Layer):
    """Caffe's ImageData: root_folder + each listed path, read in colour or grey (is_color), resized to
    new_height x new_width with OpenCV's bilinear arithmetic when both are set, transformed, batched
    in a background thread. shuffle reorders the list at setup and after every pass; rand_skip
    starts at a random line. With crop_size the images may differ in size (each is cropped)."""
    num_bottoms = 0
    num_tops = (1, 2)
    is_data = True

    def setup(self, bottom, top):
        p = self.layer_param.image_data_param
        if p.batch_size <= 0:
            raise self.error("image_data_param batch_size must be positive")
        try:
            self.items = read_image_list(p.source)
        except NetspecError as e:
            raise self.error(str(e)) from None
        if not self.items:
            raise self.error(f"image list {p.source} is empty")
        self.rng = np.random.default_rng(int(get_rng().integers(2 ** 63)))
        if p.shuffle:
            self.rng.shuffle(self.items)
        self.pos = 0
        if p.rand_skip:
            skip = int(get_rng().integers(2 ** 32)) % p.rand_skip
            if skip >= len(self.items):
                raise self.error(f"rand_skip drew {skip}, but {p.source} lists only {len(self.items)} images")
            self.pos = skip
        first = self._read(self.items[self.pos][0])
        self.transformer = DataTransformer(self.layer_param.transform_param, self.phase,
                                       seed=int(get_rng().integers(2 ** 63)),
                                       where=f"layer '{self.name}' ({self.type})")
        try:
            self.transformer.check(*first.shape)
        except NetspecError as e:
            raise self.error(str(e)) from None
        self.image_shape = first.shape
        self.shape = (p.batch_size,) + self.transformer.output_shape(*first.shape)
        self.has_label = len(top) > 1
        self._readers = ThreadPoolExecutor(decode_threads(), thread_name_prefix="netspec-imagedata")
        self._prefetcher = _Prefetcher(self._next_batch, self.layer_param.data_param.prefetch)

    def _read(self, name):
        p = self.layer_param.image_data_param
        path = p.root_folder + name
        if not os.path.exists(path) and p.root_folder and not p.root_folder.endswith("/") \
                and os.path.exists(os.path.join(p.root_folder, name)):
            raise self.error(f"{path}: no such file (root_folder is prefixed as it stands, as in Caffe: "
                             f"write root_folder: \"{p.root_folder}/\")")
        try:
            return read_image(path, p.is_color, p.new_height, p.new_width)
        except NetspecError as e:
            raise self.error(f"{p.source}: {e}") from None

    def _next_lines(self):
        """The batch's (path, label) lines; past the last line the list starts over (reshuffled)."""
        lines = []
        for _ in range(self.shape[0]):
            lines.append(self.items[self.pos])
            self.pos += 1
            if self.pos == len(self.items):
                self.pos = 0
                if self.layer_param.image_data_param.shuffle:
                    self.rng.shuffle(self.items)
        return lines

    def _next_batch(self):
        lines = self._next_lines()
        pixels = list(self._readers.map(self._read, (name for name, _ in lines)))
        images = np.empty(self.shape, np.float32)
        try:
            transform_images(self.transformer, pixels, [f"image {name}" for name, _ in lines], self.image_shape,
                             images)
        except NetspecError as e:
            raise self.error(str(e)) from None
        return images, np.array([label for _, label in lines], np.float32)

    def reshape(self, bottom, top):
        top[0].reshape(self.shape)
        if self.has_label:
            top[1].reshape(self.shape[:1])

    def forward(self, bottom, top):
        images, labels = self._prefetcher.get()
        top[0].data[...] = images
        if self.has_label:
            top[1].data[...] = labels

    def close(self):
        prefetcher = getattr(self, "_prefetcher", None)
        if prefetcher is not None:
            prefetcher.stop()
        readers = getattr(self, "_readers", None)
        if readers is not None:
            readers.shutdown()
