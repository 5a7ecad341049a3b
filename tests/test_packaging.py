"""What `pip install .` installs: a wheel built from this tree holds all
pspy needs at run time, data files included (not only the .py files)."""

import glob
import os
import shutil
import subprocess
import sys
import zipfile

from conftest import REPO


def test_the_wheel_holds_the_seccomp_profiles_the_native_helper_pspy_init_and_sitecustomize(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.so", "build",
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
