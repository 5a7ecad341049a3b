# The native helper (pspy/_native/build.py) is built by cffi during install;
# everything else is in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["pspy/_native/build.py:ffibuilder"])
