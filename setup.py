"""Build the optional compiled kernels (netspec/_native.c); everything else is in pyproject.toml.

optional=True: without a C compiler the install still succeeds and netspec runs its numpy
paths (netspec/layers/native.py decides at import).
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "netspec._native",
    sources=["netspec/_native.c"],
    depends=["netspec/_native_body.h", "netspec/_depthwise_body.h", "netspec/_winograd_body.h"],
    # No fused multiply-adds: the kernels round as the numpy code they replace does. No errno
    # from sqrt, so that its loops vectorise (LRN); the results are the same.
    extra_compile_args=["-O3", "-ffp-contract=off", "-fno-math-errno"],
    optional=True,
)])
