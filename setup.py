# setuptools needs setup.py to pass cffi_modules: the C datapath in native/ is
# compiled (cffi API mode, out of line) into slirp._native at install time.
# build_py also records the git commit for `slirpnet --version`.
import pathlib
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py


class build_py_with_commit(build_py):
    def run(self):
        super().run()
        try:
            sha = subprocess.run(
                ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            sha = "unknown"
        target = pathlib.Path(self.build_lib, "slirp", "_commit.py")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f'COMMIT = "{sha}"\n')


setup(cffi_modules=["native/build.py:ffibuilder"], cmdclass={"build_py": build_py_with_commit})
