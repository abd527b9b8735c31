# setuptools needs setup.py only to pass cffi_modules: the C datapath in native/
# is compiled (cffi API mode, out of line) into slirp._native at install time.
from setuptools import setup

setup(cffi_modules=["native/build.py:ffibuilder"])
