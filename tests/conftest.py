"""Test configuration shared by all suites.

The repository root goes first on sys.path so the tests exercise this checkout
(an installed slirpnet elsewhere must not shadow it).  The compiled module
slirp._native is built in place by ``python native/build.py`` (tests/run does
it) or comes from ``pip install -e .``.
"""
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
