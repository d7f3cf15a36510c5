"""netspec's one random stream (Caffe's Caffe::rng_stream).

Fillers, dropout, random crops and mirrors all draw from it, so a seeded run is
repeatable and its state can be saved with a snapshot for exact resume.
"""
import numpy as np

_rng = np.random.default_rng()


def get_rng():
    return _rng


def set_seed(seed):
    global _rng
    _rng = np.random.default_rng(int(seed))


def get_state():
    return _rng.bit_generator.state


def set_state(state):
    _rng.bit_generator.state = state


class CRand:
    """glibc's rand() (the TYPE_3 additive generator behind srand/rand), and libstdc++'s
    std::random_shuffle over it: the only randomness of Caffe's HDF5Data layer. Caffe never
    seeds rand(), so its HDF5 shuffles are the same in every run (srand(1)), whatever random_seed.

        r[0] = seed; r[i] = 16807 r[i-1] mod (2^31 - 1) for i < 31; r[i] = r[i-31] for i < 34
        r[i] = r[i-31] + r[i-3] mod 2^32;  the k-th rand() is r[k + 344] >> 1
    """
    LAG_LONG, LAG_SHORT, WARMUP = 31, 3, 310

    def __init__(self, seed=1):
        self.seed(seed)

    def seed(self, seed):
        value = int(seed) & 0xFFFFFFFF or 1           # glibc: srand(0) is srand(1)
        r = [value]
        for _ in range(1, self.LAG_LONG):
            hi, lo = divmod(r[-1], 127773)           # Schrage's method, as glibc writes it
            word = 16807 * lo - 2836 * hi
            r.append(word + 2147483647 if word < 0 else word)
        self._state = r + r[:3]
        for _ in range(self.WARMUP):
            self._step()

    def _step(self):
        r = self._state
        value = (r[-self.LAG_LONG] + r[-self.LAG_SHORT]) & 0xFFFFFFFF
        r.append(value)
        del r[0]
        return value

    def rand(self):
        return self._step() >> 1

    def random_shuffle(self, items):
        """std::random_shuffle(first, last): swap item i with item rand() % (i + 1), i = 1..n-1."""
        for i in range(1, len(items)):
            j = self.rand() % (i + 1)
            items[i], items[j] = items[j], items[i]

    def get_state(self):
        return list(self._state)

    def set_state(self, state):
        if len(state) != self.LAG_LONG + 3 or not all(isinstance(v, int) and 0 <= v < 2 ** 32 for v in state):
            raise ValueError("a C rand() state is 34 unsigned 32-bit integers")
        self._state = list(state)


# The process-wide rand() stream that every HDF5Data layer draws from, as in a Caffe process.
c_rand = CRand()
