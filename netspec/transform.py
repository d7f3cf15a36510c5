"""Caffe's DataTransformer over whole batches: crop, mirror, mean subtraction, scale.

The order and arithmetic follow Caffe: out = (pixel - mean) * scale, where the
mean is a per-pixel mean file (taken at the crop window) or per-channel mean
values. Random crops and mirrors happen in TRAIN only and draw from the
transformer's own seeded generator, so a seeded run repeats exactly and the
generator's state can be saved for resume.
"""
import numpy as np

from .datasets.image_mean import load_mean_binaryproto
from .errors import NetspecError
from .proto import caffe_pb2


class DataTransformer:
    def __init__(self, param, phase, seed, where="layer 'data'"):
        self.param, self.phase = param, phase
        self.where = where                                # how errors name the layer
        self.rng = np.random.default_rng(seed)
        self.mean = None
        if param.mean_file and len(param.mean_value):
            raise NetspecError(f"{self.where}: transform_param sets both mean_file and mean_value; "
                               "use one")
        if param.mean_file:
            try:
                self.mean = load_mean_binaryproto(param.mean_file).astype(np.float32)
            except NetspecError as e:
                raise NetspecError(f"{self.where}: {e}") from None
        self.mean_values = np.asarray(param.mean_value, np.float32)

    def output_shape(self, channels, height, width):
        crop = self.param.crop_size
        if crop and (crop > height or crop > width):
            raise NetspecError(f"{self.where}: crop_size {crop} is larger than the images "
                               f"({height}x{width})")
        return (channels, crop or height, crop or width)

    def check(self, channels, height, width):
        """Fail at setup, not mid-training, when the mean does not fit the data."""
        if self.mean is not None and self.mean.shape != (channels, height, width):
            raise NetspecError(f"{self.where}: mean_file {self.param.mean_file} has shape "
                               f"{self.mean.shape}, the data has ({channels}, {height}, {width})")
        if len(self.mean_values) not in (0, 1, channels):
            raise NetspecError(f"{self.where}: {len(self.mean_values)} mean_value entries for "
                               f"{channels} channels (give 1 or one per channel)")
        self.output_shape(channels, height, width)

    def __call__(self, batch, out):
        """Transform `batch` (N, C, H, W; uint8 or float) into `out` (N, C, h, w) float32."""
        n, c, h, w = batch.shape
        crop = self.param.crop_size
        train = self.phase == caffe_pb2.TRAIN
        mirror = self.param.mirror and train
        if crop:
            if train:
                h_off = self.rng.integers(0, h - crop + 1, n)
                w_off = self.rng.integers(0, w - crop + 1, n)
            else:
                h_off = np.full(n, (h - crop) // 2)
                w_off = np.full(n, (w - crop) // 2)
        flips = self.rng.integers(0, 2, n).astype(bool) if mirror else None

        if not crop and flips is None:
            if self.mean is not None:
                np.subtract(batch, self.mean, out=out, casting="unsafe")
            elif len(self.mean_values):
                np.subtract(batch, self.mean_values.reshape(-1, 1, 1) if len(self.mean_values) > 1
                            else self.mean_values[0], out=out, casting="unsafe")
            else:
                out[...] = batch
        else:
            size_h, size_w = crop or h, crop or w
            rows = (h_off[:, None] if crop else 0) + np.arange(size_h)          # (N, h)
            cols = (w_off[:, None] if crop else 0) + np.arange(size_w)          # (N, w)
            cols = np.broadcast_to(cols, (n, size_w)).copy()
            if flips is not None:
                cols[flips] = cols[flips][:, ::-1]
            rows = np.broadcast_to(rows, (n, size_h))
            idx_n = np.arange(n)[:, None, None]
            # Gather each sample's window: (N, h, w, C) -> (N, C, h, w).
            window = batch.transpose(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]
            window = window.transpose(0, 3, 1, 2).astype(np.float32)
            if self.mean is not None:
                # The mean file is full size: subtract it at the same window (and flip) as the data.
                mean = self.mean.transpose(1, 2, 0)[rows[:, :, None], cols[:, None, :]].transpose(0, 3, 1, 2)
                window -= mean
            elif len(self.mean_values):
                window -= self.mean_values.reshape(-1, 1, 1) if len(self.mean_values) > 1 else self.mean_values[0]
            out[...] = window
        if self.param.scale != 1:
            out *= self.param.scale
        return out

    def get_state(self):
        return self.rng.bit_generator.state

    def set_state(self, state):
        self.rng.bit_generator.state = state
