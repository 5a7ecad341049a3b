"""bench/rpc.py keeps working and writes the figures it promises (no timing checks)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


def test_rpc_bench_writes_medians_p99_ratios_and_throughput(tmp_path):
    out = tmp_path / "rpc.json"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench", "rpc.py"), "--quick", "--only", "pspy",
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())["results"]
    assert {"floor (socketpair, frames, no codec)", "pspy", "direct in-process call"} <= set(results)
    for name in ("pspy", "floor (socketpair, frames, no codec)"):
        entry = results[name]
        for payload in ("small add(1, 2)", "echo 4 KiB", "echo 1 MiB"):
            assert set(entry[payload]) == {"median_us", "p99_us", "ratio_to_floor"}
        assert entry["concurrent"]["calls_per_s"] > 0
    assert "pspy" in proc.stdout   # the table was printed


@pytest.mark.root
def test_bootstrap_bench_prints_the_overhead_rows_it_promises(tmp_path):
    out = tmp_path / "boot.json"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench", "bootstrap.py"), "--runs", "1",
                           "--padding-mb", "1", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    startup = json.loads(out.read_text())["startup_s"]
    for mode in ("chroot", "namespaces"):
        for tag in ("", ", seccomp"):
            assert f"python start, as Bank ({mode}{tag})" in startup
    for row in ("sandbox overhead, namespaces, own network namespace", "seccomp filter load, namespaces, default"):
        assert row in proc.stdout


@pytest.mark.root
def test_app_bench_measures_both_apps_in_every_configuration_with_no_failed_request(tmp_path):
    out = tmp_path / "app.json"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench", "app.py"), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"zoobank", "microblog"}
    for app, configs in results.items():
        assert set(configs) == {"unseparated", "chroot", "namespaces"}
        for entry in configs.values():
            assert set(entry) == {"requests_per_s", "median_ms", "p99_ms", "failed",
                                  "throughput_ratio", "median_ratio"}
            assert entry["failed"] == 0 and entry["requests_per_s"] > 0
        assert configs["unseparated"]["throughput_ratio"] == 1.0
        for config in configs:
            assert f"{app:<10} {config:<12}" in proc.stdout   # its row of the table


@pytest.mark.root
def test_percall_bench_prints_every_condition_in_both_modes():
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench", "percall.py"), "--calls", "5"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for mode in ("chroot", "namespaces"):
        for condition in ("per_call run('pass')", "per_call whoami()", "fork+exec python -c pass"):
            assert any(line.startswith(f"{mode:<11} {condition}") for line in proc.stdout.splitlines())
