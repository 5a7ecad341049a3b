# The native helper (pspy/_native/build.py) is built by cffi during install,
# and pspy-init (pspy/_native/init.c, PID 1 of each principal's PID namespace
# in namespace mode) is compiled next to it; everything else is in
# pyproject.toml.
import os

from setuptools import setup
from setuptools.command.build_ext import build_ext

INIT_SOURCE = os.path.join("pspy", "_native", "init.c")
INIT_PACKAGE = "pspy._native"
INIT_NAME = "pspy-init"


class BuildExtAndInit(build_ext):
    """build_ext, then pspy-init with the same C compiler: built in build_lib
    like the extensions, and copied into the source tree when in place (an
    editable install), as setuptools does for them."""

    def _init_paths(self) -> tuple[str, str]:
        regular = os.path.join(self.build_lib, *INIT_PACKAGE.split("."), INIT_NAME)
        package_dir = self.get_finalized_command("build_py").get_package_dir(INIT_PACKAGE)
        return regular, os.path.join(package_dir, INIT_NAME)

    def run(self):
        super().run()
        regular, inplace = self._init_paths()
        os.makedirs(os.path.dirname(regular), exist_ok=True)
        objects = self.compiler.compile([INIT_SOURCE], output_dir=self.build_temp,
                                        extra_postargs=["-O2", "-Wall"])
        self.compiler.link_executable(objects, INIT_NAME, output_dir=os.path.dirname(regular))
        if self.inplace:
            self.copy_file(regular, inplace, level=self.verbose)

    def get_outputs(self):
        return [*super().get_outputs(), self._init_paths()[0]]

    def _get_output_mapping(self):
        yield from super()._get_output_mapping()
        if self.inplace:
            yield self._init_paths()


# The helper is built for CPython's stable ABI (cffi's default), so one wheel
# serves every supported CPython: tag it cp311-abi3.
setup(cffi_modules=["pspy/_native/build.py:ffibuilder"], cmdclass={"build_ext": BuildExtAndInit},
      options={"bdist_wheel": {"py_limited_api": "cp311"}})
