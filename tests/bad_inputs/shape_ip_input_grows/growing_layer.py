"""A data layer whose output gains one column at every reshape (for the bad-input tests)."""
import netspec


class Growing(netspec.Layer):
    def setup(self, bottom, top):
        self.width = 2

    def reshape(self, bottom, top):
        self.width += 1
        top[0].reshape(2, self.width)

    def forward(self, bottom, top):
        top[0].data[...] = 1.0
