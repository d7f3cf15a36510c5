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
