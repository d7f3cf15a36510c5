"""Reads `scale=<number>` from param_str; anything else is the user's mistake."""
import netspec


class Strict(netspec.Layer):
    def setup(self, bottom, top):
        key, value = self.param_str.split("=")
        self.scale = float(value)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.scale * bottom[0].data
