"""vagrant/: the Vagrantfile is valid, and its provisioning runs the README's
test command (never a copy of its steps). The VM boot itself is proven by
vagrant/selftest.sh, too slow for every CI run."""

import os
import re
import shutil
import subprocess

import pytest

from conftest import IS_ROOT, REPO

VAGRANT = os.path.join(REPO, "vagrant")


def readme_test_command():
    text = open(os.path.join(REPO, "README.md")).read()
    (command,) = re.findall(r"^\| the whole test suite \| `([^`]+)` \|$", text, re.M)
    return command


def test_the_vagrantfile_is_valid(tmp_path):
    if shutil.which("vagrant") is None:
        if IS_ROOT:
            pytest.fail("vagrant is missing: the test command's set-up (scripts/setup.sh) installs it as root")
        pytest.skip("needs vagrant (the test command's set-up installs it when run as root)")
    # A copy, so that vagrant's state folder (.vagrant) is not left in the tree.
    shutil.copytree(VAGRANT, tmp_path / "vagrant")
    proc = subprocess.run(["vagrant", "validate"], cwd=tmp_path / "vagrant", capture_output=True, text=True,
                          env=dict(os.environ, VAGRANT_HOME=str(tmp_path / "home"), VAGRANT_CHECKPOINT_DISABLE="1"), timeout=120)
    assert proc.returncode == 0 and "validated successfully" in proc.stdout, proc.stdout + proc.stderr
    # Control: a setting that does not exist fails validation.
    broken = tmp_path / "vagrant" / "Vagrantfile"
    broken.write_text(broken.read_text().replace("config.vm.hostname", "config.vm.hostnam"))
    proc = subprocess.run(["vagrant", "validate"], cwd=tmp_path / "vagrant", capture_output=True, text=True,
                          env=dict(os.environ, VAGRANT_HOME=str(tmp_path / "home"), VAGRANT_CHECKPOINT_DISABLE="1"), timeout=120)
    assert proc.returncode != 0, proc.stdout


def test_provisioning_runs_the_readmes_test_command_and_nothing_of_its_own():
    command = readme_test_command()
    assert command == "bash scripts/test.sh"
    script = open(os.path.join(VAGRANT, "provision.sh")).read()
    lines = [line.strip() for line in script.splitlines() if line.strip() and not line.strip().startswith("#")]
    # The test command itself; PSPY_TEST_ARGS may narrow it to part of the suite.
    assert lines[-1] == f"exec {command} ${{PSPY_TEST_ARGS:-}}", lines
    # No step of the test command copied here: it installs what it needs itself.
    for copied in ("apt-get", "pip", "pytest", "venv", "setup.sh"):
        assert not [line for line in lines if re.search(rf"(^|[\s/.]){re.escape(copied)}\b", line)], copied
    vagrantfile = open(os.path.join(VAGRANT, "Vagrantfile")).read()
    assert 'path: "provision.sh"' in vagrantfile
    assert '"debian/bookworm64"' in vagrantfile
    for provider in ("libvirt", "virtualbox"):
        block = vagrantfile.split(f'config.vm.provider "{provider}"')[1].split("end")[0]
        assert "cpus = 2" in block and "memory = 4096" in block, provider
