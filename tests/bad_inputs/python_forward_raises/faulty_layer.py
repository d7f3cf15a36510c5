"""A layer whose forward has a bug: it indexes past the end of its bottom's shape."""
import netspec


class Faulty(netspec.Layer):
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data / bottom[0].shape[2]
