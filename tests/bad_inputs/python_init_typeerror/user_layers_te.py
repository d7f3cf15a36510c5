import netspec


class Broken(netspec.Layer):
    def __init__(self, layer_param):
        super().__init__(layer_param)
        self.width = int(None)
