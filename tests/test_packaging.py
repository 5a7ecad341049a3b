"""What `pip install .` installs: a wheel built from this tree holds all
pspy needs at run time, data files included (not only the .py files)."""

import glob
import re
import os
import shutil
import subprocess
import sys
import zipfile

from conftest import REPO


def test_the_wheel_holds_the_seccomp_profiles_the_native_helper_pspy_init_and_sitecustomize(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", ".venv-*", "__pycache__", "*.so", "build",
                                                                "*.egg-info", ".pytest_cache", "pspy-init"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                           "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    wheel = zipfile.ZipFile(glob.glob(str(tmp_path / "dist" / "*.whl"))[0])
    names = wheel.namelist()
    for profile in ("default", "web", "strict"):
        assert f"pspy/seccomp/profiles/{profile}.json" in names
    assert "pspy/_sitecustomize.py" in names and "pspy/_filter.py" in names
    assert any(n.startswith("pspy/_native/_helper") and n.endswith(".so") for n in names)
    # PID 1 of namespace mode, compiled by setup.py's build_ext, executable
    assert (wheel.getinfo("pspy/_native/pspy-init").external_attr >> 16) & 0o111
    assert sorted(os.listdir(os.path.join(REPO, "seccomp_profiles"))) == ["default.json", "strict.json", "web.json"]
    # Metadata a user (and the package index) reads: an SPDX license with its text, the Pythons it runs on.
    meta = next(wheel.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert "License-Expression: MIT" in meta and "License-File: LICENSE" in meta
    assert any(n.endswith("licenses/LICENSE") for n in names)
    for version in ("3.11", "3.12", "3.13"):
        assert f"Classifier: Programming Language :: Python :: {version}" in meta
    # The helper names no private CPython symbol it would need at load time:
    # 3.13 no longer exports _Py_DumpTraceback, and every command died there.
    helper = next(n for n in names if n.startswith("pspy/_native/_helper") and n.endswith(".so"))
    wheel.extract(helper, tmp_path / "x")
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(tmp_path / "x" / helper)],
                               capture_output=True, text=True, check=True).stdout
    assert "_Py_DumpTraceback" not in undefined   # looked up with dlsym where there is one


def test_pspy_version_says_the_installed_version():
    from importlib.metadata import version
    proc = subprocess.run([sys.executable, "-m", "pspy", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"pspy {version('pspy-privsep')}", proc


def test_the_sdist_holds_what_its_tests_need(tmp_path):
    import tarfile
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", ".venv-*", "__pycache__", "*.so", "build",
                                                                "*.egg-info", ".pytest_cache", "pspy-init"))
    proc = subprocess.run([sys.executable, "-m", "build", "--sdist", "-o", str(tmp_path / "dist"), str(source)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (sdist,) = glob.glob(str(tmp_path / "dist" / "*.tar.gz"))
    names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
    for needed in ("LICENSE", "README.md", "tests/conftest.py", "tests/test_analyze.py", "tests/apps/flaky/flaky.py",
                   "examples/zoobank/app.py", "examples/microblog/app.py", "docs/analyze.schema.json",
                   "scripts/test.sh", "scripts/setup.sh", "scripts/other-pythons.sh", "pspy/_native/init.c", "pspy/_native/spawn.c",
                   "pspy/seccomp/profiles/default.json"):
        assert needed in names, needed
    assert not [n for n in names if n.endswith((".so", ".pyc")) or "__pycache__" in n]


def test_the_wheel_is_manylinux_abi3_and_carries_its_own_libseccomp(tmp_path):

    dist = tmp_path / "dist"
    proc = subprocess.run(["bash", os.path.join(REPO, "scripts", "wheel.sh"), str(dist)], capture_output=True,
                          text=True, env=dict(os.environ, PY=sys.executable), timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (wheel,) = glob.glob(str(dist / "*.whl"))
    # One wheel for every supported CPython, accepted by auditwheel as manylinux.
    assert re.fullmatch(r"pspy_privsep-[\w.]+-cp311-abi3-manylinux_2_\d+_x86_64\.whl", os.path.basename(wheel)), wheel
    bin_dir = os.path.dirname(sys.executable)
    shown = subprocess.run([sys.executable, "-m", "auditwheel", "show", wheel], capture_output=True, text=True,
                           env=dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}"))
    assert shown.returncode == 0 and re.search(r'consistent\s+with\s+the\s+following\s+platform\s+tag:\s+"manylinux_2_\d+_x86_64"',
                                               shown.stdout), shown.stdout + shown.stderr
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(wheel).extractall(unpacked)
    (vendored,) = glob.glob(str(unpacked / "pspy_privsep.libs" / "libseccomp-*.so*"))
    # Loaded from the unpacked wheel, the helper uses that copy, not the system's.
    probe = ("import pspy, pspy._native\n"
             "from pspy import seccomp\n"
             "program = seccomp.compile_bpf(seccomp.read_profile(seccomp.shipped_path('default')))\n"
             "maps = {line.split()[-1] for line in open('/proc/self/maps') if 'libseccomp' in line}\n"
             "print(pspy.__file__); print(len(program)); print(*sorted(maps))\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(unpacked)))
    assert proc.returncode == 0, proc.stderr
    where, length, maps = proc.stdout.splitlines()
    assert where.startswith(str(unpacked)) and int(length) > 0
    assert maps == os.path.realpath(vendored), maps
    # control: the helper built in the tree links the system's libseccomp
    proc = subprocess.run([sys.executable, "-c", probe.replace("print(pspy.__file__); ", "")], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 0 and "pspy_privsep.libs" not in proc.stdout and "libseccomp" in proc.stdout, proc
