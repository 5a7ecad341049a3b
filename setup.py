# The native helper (pspy/_native/build.py) is built by cffi during install,
# and pspy-init (pspy/_native/init.c, PID 1 of each principal's PID namespace
# in namespace mode) is compiled next to it; everything else is in
# pyproject.toml.
import os

from setuptools import setup
from setuptools.command.build_ext import build_ext

INIT_SOURCE = os.path.join("pspy", "_native", "init.c")
INIT_NAME = "pspy-init"


class BuildExtAndInit(build_ext):
    """build_ext, then pspy-init with the same C compiler."""

    def run(self):
        super().run()
        package_dir = os.path.join("pspy", "_native")
        out_dir = package_dir if self.inplace else os.path.join(self.build_lib, package_dir)
        os.makedirs(out_dir, exist_ok=True)
        objects = self.compiler.compile([INIT_SOURCE], output_dir=self.build_temp,
                                        extra_postargs=["-O2", "-Wall"])
        self.compiler.link_executable(objects, INIT_NAME, output_dir=out_dir)
        self._init_output = os.path.join(out_dir, INIT_NAME)

    def get_outputs(self):
        outputs = super().get_outputs()
        package_dir = os.path.join("pspy", "_native")
        out_dir = package_dir if self.inplace else os.path.join(self.build_lib, package_dir)
        return [*outputs, os.path.join(out_dir, INIT_NAME)]


setup(cffi_modules=["pspy/_native/build.py:ffibuilder"], cmdclass={"build_ext": BuildExtAndInit})
