"""pycaffe's caffe.Detector: score image windows (R-CNN style) with a TEST net.

    det = Detector('deploy.prototxt', 'weights.caffemodel', mean=mean, raw_scale=255,
                   channel_swap=(2, 1, 0), context_pad=16)
    found = det.detect_windows([('img.jpg', np.array([[ymin, xmin, ymax, xmax], ...]))])
    # [{'window': ..., 'prediction': scores, 'filename': 'img.jpg'}, ...]

Windows are [ymin, xmin, ymax, xmax] in pixels. With `context_pad`, each window is
widened so that after warping to the net's input it has `context_pad` pixels of
surrounding image on every side (R-CNN's context padding); what falls outside the
image is filled with the mean.
"""
import numpy as np

from . import io
from .classifier import configure_transformer
from .errors import NetspecError
from .net import Net, TEST


class Detector(Net):
    def __init__(self, model_file, pretrained_file, mean=None, input_scale=None, raw_scale=None,
                 channel_swap=None, context_pad=None):
        super().__init__(model_file, pretrained_file, TEST)
        self.transformer = configure_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows):
        """Scores of every window of every (image filename, windows) pair, in order."""
        in_ = self.inputs[0]
        crops, owners = [], []
        for filename, windows in images_windows:
            image = io.load_image(filename).astype(np.float32)
            for window in windows:
                crops.append(self.crop(image, window))
                owners.append((filename, window))
        if not crops:
            return []
        batch = np.stack([self.transformer.preprocess(in_, crop) for crop in crops])
        scores = self.forward_all(**{in_: batch})[self.outputs[0]]
        scores = scores.reshape(len(scores), -1) if scores.ndim > 2 and scores[0].size == scores.shape[1] \
            else scores
        return [{"window": window, "prediction": scores[i], "filename": filename}
                for i, (filename, window) in enumerate(owners)]

    def detect_selective_search(self, image_fnames):
        """Windows from selective search (the selective_search_ijcv_with_python module), then scored."""
        try:
            import selective_search_ijcv_with_python as selective_search
        except ImportError:
            raise NetspecError("detect_selective_search needs the selective_search_ijcv_with_python module "
                               "(and MATLAB); give windows to detect_windows instead") from None
        image_fnames = [str(f) for f in image_fnames]
        windows = selective_search.get_windows(image_fnames, cmd="selective_search_rcnn")
        return self.detect_windows(zip(image_fnames, windows))

    def crop(self, im, window):
        """The window of `im` (H x W x K) to feed the net; with context padding, warped to the input size."""
        window = np.asarray(window)
        y0, x0, y1, x1 = (int(v) for v in window[:4])
        if not self.context_pad:
            return im[y0:y1, x0:x1]
        size = int(self.crop_dims[0])                     # a square input, as R-CNN's nets have
        grow = size / (size - 2.0 * self.context_pad)     # window side -> side with context
        half_h, half_w = (y1 - y0 + 1) / 2.0, (x1 - x0 + 1) / 2.0
        cy, cx = y0 + half_h, x0 + half_w
        box = np.round([cy - grow * half_h, cx - grow * half_w, cy + grow * half_h, cx + grow * half_w])
        per_px_y, per_px_x = size / (box[2] - box[0] + 1), size / (box[3] - box[1] + 1)
        # Where the clipped box lands on the canvas: shifted by what lies beyond the top/left edge.
        pad_y, pad_x = int(round(max(0.0, -box[0]) * per_px_y)), int(round(max(0.0, -box[1]) * per_px_x))
        h, w = im.shape[:2]
        box = np.clip(box, 0, [h, w, h, w]).astype(int)
        clip_h, clip_w = box[2] - box[0] + 1, box[3] - box[1] + 1
        if clip_h <= 0 or clip_w <= 0:
            raise NetspecError(f"Detector.crop: window {window[:4].tolist()} lies outside the {h}x{w} image")
        crop_h = min(int(round(clip_h * per_px_y)), size - pad_y)
        crop_w = min(int(round(clip_w * per_px_x)), size - pad_x)
        canvas = np.empty(self.crop_dims, np.float32)
        canvas[...] = self.crop_mean
        part = im[box[0]:box[2], box[1]:box[3]]
        canvas[pad_y:pad_y + crop_h, pad_x:pad_x + crop_w] = io.resize_image(part, (crop_h, crop_w))
        return canvas

    def configure_crop(self, context_pad):
        """Set the context padding, and the mean (in image space) that fills outside the image."""
        in_ = self.inputs[0]
        to_image = np.argsort(self.transformer.transpose[in_])
        self.crop_dims = np.array(self.blobs[in_].data.shape[1:])[to_image]      # H x W x K
        self.context_pad = context_pad
        if not context_pad:
            return
        mean = self.transformer.mean.get(in_)
        if mean is None:
            self.crop_mean = np.zeros(self.crop_dims, np.float32)
            return
        mean = np.broadcast_to(mean, self.blobs[in_].data.shape[1:]).astype(np.float32)
        swap = self.transformer.channel_swap.get(in_)
        if swap is not None:
            mean = mean[np.argsort(swap)]
        mean = mean / np.float32(self.transformer.raw_scale.get(in_, 1.0))
        self.crop_mean = mean.transpose(to_image)
