"""The benches keep working and write the figures they promise (no timing checks);
a row whose command did not run is reported as such, never as a time."""

import functools
import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
import types

import pytest

from conftest import REPO


@functools.cache
def bootstrap_bench():
    spec = importlib.util.spec_from_file_location("bootstrap_bench", os.path.join(REPO, "bench", "bootstrap.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def python_start(code):
    """A start function for the bench's rows: this interpreter running ``code``."""
    return lambda stdout, stderr: subprocess.Popen([sys.executable, "-c", code], stdout=stdout, stderr=stderr)


def test_a_sandbox_that_fails_to_exec_is_not_run_with_its_stderr_and_has_no_time():
    bench = bootstrap_bench()
    failed_exec = python_start("import sys; sys.stderr.write('bwrap: execvp /tmp/v/bin/python: No such file or "
                               "directory\\nmore\\n'); sys.exit(1)")
    rows = bench.interleaved_medians({"host": python_start(bench.READY_CODE), "bwrap": failed_exec}, runs=1, pause=0)
    assert isinstance(rows["host"], float)
    not_run = rows["bwrap"]
    assert isinstance(not_run, bench.NotRun)
    assert str(not_run) == "bwrap: execvp /tmp/v/bin/python: No such file or directory (exit status 1)"
    assert bench.time_cell(not_run).strip() == f"did not run: {not_run}"
    assert " ms" not in bench.time_cell(not_run)
    assert bench.json_value(not_run) == {"not_run": str(not_run)}
    overhead = bench.difference(not_run, rows["host"], ("bwrap", "host"))
    assert isinstance(overhead, bench.NotRun) and "'bwrap' did not run" in str(overhead)


@pytest.mark.parametrize("code, reason", [
    ("import os; os.write(1, b'!'); raise SystemExit(3)", "exit status 3, no stderr"),   # the byte came, then failure
    ("pass", "wrote b'' instead of b'!'"),
    ("import os; os.write(1, b'!?')", "wrote b'!?' instead of b'!'"),
    ("raise RuntimeError('cannot mount proc on /newroot/proc')",
     "RuntimeError: cannot mount proc on /newroot/proc (exit status 1)"),
])
def test_a_start_counts_only_if_it_wrote_the_expected_output_and_exited_0(code, reason):
    bench = bootstrap_bench()
    with pytest.raises(bench.NotRun) as failure:
        bench.time_until_first_byte(python_start(code))
    assert str(failure.value) == reason


def test_a_sandbox_whose_program_is_missing_is_not_run():
    bench = bootstrap_bench()

    def missing(stdout, stderr):
        return subprocess.Popen(["/nonexistent/bwrap"], stdout=stdout, stderr=stderr)

    with pytest.raises(bench.NotRun, match="/nonexistent/bwrap"):
        bench.time_until_first_byte(missing)


def test_bubblewrap_row_binds_the_python_prefixes_after_its_private_tmp(tmp_path):
    # A venv under /tmp must be bound on top of the row's private /tmp, not hidden under it.
    from pspy.sandbox import mount
    argv = bootstrap_bench().bwrap_argv(types.SimpleNamespace(jail=str(tmp_path)))
    private_tmp = argv.index("--tmpfs")
    assert argv[private_tmp + 1] == "/tmp"
    for prefix in mount.python_paths(str(tmp_path)):
        bind = next(i for i in range(len(argv) - 2) if argv[i:i + 3] == ["--ro-bind", prefix, prefix])
        assert bind > private_tmp


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


def data_bench():
    spec = importlib.util.spec_from_file_location("data_bench", os.path.join(REPO, "bench", "data.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_data_bench_times_every_workload_on_every_row_against_direct_sqlite(tmp_path):
    # The bench exits 1 unless every row reads what direct sqlite3 reads and the
    # column-limited rows are refused user.pw_hash: a 0 here means they were.
    out = tmp_path / "data.json"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench", "data.py"), "--quick", "--dir", str(tmp_path),
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(out.read_text())
    bench = data_bench()
    assert set(figures["results"]) == set(bench.SYSTEMS)
    for entry in figures["results"].values():
        assert set(entry) == set(bench.WORKLOADS)
        for e in entry.values():
            assert set(e) == {"median_us", "p99_us", "ratio_to_direct", "added_us_per_statement"}
            assert 0 < e["median_us"] <= e["p99_us"]
    assert figures["results"][bench.DIRECT]["point select"]["ratio_to_direct"] == 1.0
    assert set(figures["goals"]) == {"point select", "1,000-row fetch", "page (10 statements)"}
    for parts in figures["breakdown"].values():
        assert parts["total: one statement through the grants"] > 0 and parts["answer bytes"] > 0
    assert "database part of a page only" in proc.stdout   # says what its page leaves out
    assert bench.PSPY_LIMITED in proc.stdout               # the table was printed


def test_data_bench_refuses_rows_that_would_not_measure_what_they_claim(tmp_path):
    bench = data_bench()
    path = bench.make_database(str(tmp_path))
    # Every row a plain connection: the "limited" rows read user.pw_hash, which their grants leave out.
    connections = {name: sqlite3.connect(path) for name in bench.SYSTEMS}
    try:
        problems = bench.check_connections(connections)
        assert any(p.startswith(f"{bench.PSPY_LIMITED}: read user.pw_hash") for p in problems), problems
        assert any(p.startswith(f"{bench.DIRECT_AUTHORIZER}: read user.pw_hash") for p in problems), problems
        connections[bench.PSPY_EVERY].execute("DELETE FROM message WHERE message_id = 1500")
        assert any("1,000-row fetch" in p and bench.PSPY_EVERY in p for p in bench.check_connections(connections))
    finally:
        for db in connections.values():
            db.close()


@pytest.mark.root
def test_bootstrap_bench_prints_the_overhead_rows_it_promises(tmp_path):
    out = tmp_path / "boot.json"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench", "bootstrap.py"), "--runs", "1",
                           "--padding-mb", "1", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    startup = json.loads(out.read_text())["startup_s"]
    for mode in ("chroot", "namespaces"):
        for tag in ("", ", seccomp"):
            assert isinstance(startup[f"python start, as Bank ({mode}{tag})"], float)   # it ran
    bwrap = startup["python start, bubblewrap (for comparison)"]
    assert isinstance(bwrap, float) or set(bwrap) == {"not_run"}
    for row in ("sandbox overhead, namespaces, own network namespace", "seccomp filter load, namespaces, default"):
        assert row in proc.stdout


@pytest.mark.root
def test_app_bench_measures_its_apps_in_every_configuration_with_no_failed_request(tmp_path):
    out = tmp_path / "app.json"
    # Two of its four apps, for time: zoobank (services over RPC) and
    # dpaste_grants (a Django page's queries through the data grants); the
    # microblog and minitwit differ from them only in their requests.
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench", "app.py"), "--quick", "--only", "zoobank",
                           "--only", "dpaste_grants", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"zoobank", "dpaste_grants"}
    for app, configs in results.items():
        assert set(configs) == {"unseparated", "chroot", "namespaces"}
        for entry in configs.values():
            assert set(entry) == {"requests_per_s", "median_ms", "p99_ms", "failed",
                                  "throughput_ratio", "median_ratio"}
            assert entry["failed"] == 0 and entry["requests_per_s"] > 0
        assert configs["unseparated"]["throughput_ratio"] == 1.0
        for config in configs:
            assert f"{app:<14} {config:<12}" in proc.stdout   # its row of the table


@pytest.mark.root
def test_percall_bench_prints_every_condition_in_both_modes():
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench", "percall.py"), "--calls", "5"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for mode in ("chroot", "namespaces"):
        for condition in ("per_call run('pass')", "per_call whoami()", "fork+exec python -c pass"):
            assert any(line.startswith(f"{mode:<11} {condition}") for line in proc.stdout.splitlines())


@pytest.mark.root
def test_restart_bench_prints_both_ways_of_restarting_in_both_modes():
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench", "restart.py"), "--kills", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()]
    for mode in ("chroot", "namespaces"):
        for condition in ("pspy ready copy", "fork+exec restart"):
            row = next((r for r in rows if " ".join(r[:-3]) == f"{mode}, {condition}"), None)
            assert row is not None, proc.stdout
            median, p99, ratio = row[-3:]
            assert float(median) > 0 and float(p99) >= float(median) and ratio.endswith("x"), row
