"""The one C extension (sfu/_fastsend.c: sendmmsg for the fan-out); everything else is in
pyproject.toml. Optional: without a compiler or Python's headers the install still succeeds and
sfu/fastsend.py sends in Python."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("sfu._fastsend", ["sfu/_fastsend.c"], optional=True)])
