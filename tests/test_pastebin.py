"""The paste-bin example (Django) privilege-separated, in chroot mode and in
namespace mode, used over HTTP, with hostile snippets sent to its evaluate
service.

The front end `web` is Django's own server (manage.py runserver --noreload)
and owns the paste database (pspy.toml's perms). `evaluate` runs each
snippet in a fresh process of the provider Evaluator (isolation="per_call",
strict seccomp, no network, nothing writable but a private temporary
folder, limits). Each attack below is sent as a user would send it, a paste
then "run"; it must fail, come back as the run's error, and leave the site
serving the next request within a second.
"""

import importlib.util
import json
import os
import socket

import pytest

from conftest import REPO, access_of, free_port, pspy

pytestmark = pytest.mark.root

PASTEBIN = os.path.join(REPO, "examples", "pastebin")
SECRET_KEY = "pastebin-front-end-only-secret"
DATABASE = "db/pastes.sqlite3"

_spec = importlib.util.spec_from_file_location("pastebin_workload", os.path.join(PASTEBIN, "workload.py"))
workload = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(workload)


def _state(jail):
    return json.load(open(os.path.join(jail, ".pspy", "run", "state.json")))


def _front_end_pid(jail):
    """The host pid of the Django server (in namespace mode, below its PID 1)."""
    pid = _state(jail)["principals"]["web"]["pid"]
    if "pspy-init" in open(f"/proc/{pid}/cmdline").read():
        pid = int(open(f"/proc/{pid}/task/{pid}/children").read().split()[0])
    return pid


@pytest.fixture(scope="module", params=["chroot", "namespaces"])
def site(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"pastebin-{request.param}")
    jail = str(root / "jail")
    port = free_port()
    outside = root / "outside-secret.txt"   # on the host, outside every view
    outside.write_text("host secret")
    flags = ["--namespaces"] if request.param == "namespaces" else []
    pspy("bootstrap", PASTEBIN, "--jail", jail, "--detach", *flags, "--",
         "python", "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}",
         env={"PASTEBIN_SECRET_KEY": SECRET_KEY}, check=True)
    try:
        base = f"http://127.0.0.1:{port}"
        workload.wait_until_up(base)
        yield {"jail": jail, "base": base, "port": port, "mode": request.param, "outside": str(outside),
               "client": workload.Client(base), "web_pid": _front_end_pid(jail)}
    finally:
        pspy("stop", "--jail", jail)


def contained(site, code):
    """Run ``code`` as a paste; the run's result, once the site has served
    the next page and the next run, each within a second. The next paste is
    saved beforehand: saving waits for SQLite's fsync, which a busy disk can
    hold past a second whatever the snippet did."""
    status, following = site["client"].create("print('next')")
    assert status == 201, following
    status, result = site["client"].evaluate(code)
    assert status == 200, result
    quick = workload.Client(site["base"], timeout=1)
    status, listed = quick.pastes()
    assert status == 200 and listed["pastes"], listed
    assert quick.run(following["id"]) == (200, {"output": "next\n", "error": None})
    return result


def test_a_benign_snippet_returns_its_output_and_its_exception(site):
    assert contained(site, "print(sum(range(10)))") == {"output": "45\n", "error": None}
    assert contained(site, "print('a'); 1/0") == {"output": "a\n", "error": "ZeroDivisionError: division by zero"}
    status, paste = site["client"].create("print(6 * 7)", title="answer")
    assert status == 201 and site["client"].paste(paste["id"])[1]["code"] == "print(6 * 7)"
    assert "answer" in [p["title"] for p in site["client"].pastes()[1]["pastes"]]


def test_the_pages_create_show_and_run_a_paste_for_a_person_with_a_browser(site):
    browser = workload.Client(site["base"])
    status, html = browser.form("/", {"title": "greeting", "code": "print('hello <world>')"})
    assert status == 200 and "<h2>greeting</h2>" in html          # redirected to the paste's page
    paste_id = max(p["id"] for p in browser.pastes()[1]["pastes"] if p["title"] == "greeting")
    status, html = browser.form(f"/{paste_id}/run", {}, page=f"/{paste_id}/")
    assert status == 200 and '<pre class="output">hello &lt;world&gt;\n</pre>' in html
    assert browser.form("/", {"title": "empty", "code": " "})[0] == 400
    # control for the CSRF check the forms pass: a post without the token is refused
    assert browser._open(workload.urllib.request.Request(site["base"] + "/", method="POST", data=b"code=x"))[0] == 403


def test_a_snippet_cannot_read_the_paste_database_which_the_front_end_owns(site):
    result = contained(site, f"print(open({DATABASE!r}, 'rb').read(16))")
    assert result["output"] == "" and result["error"].startswith(("PermissionError", "FileNotFoundError")), result
    result = contained(site, f"import sqlite3; print(sqlite3.connect({DATABASE!r}).execute("
                             "'SELECT code FROM pastes_paste').fetchall())")
    assert result["error"] == "sqlite3.OperationalError: unable to open database file", result
    # control: the front end reads and writes it (every page above), and the
    # snippet reads the app's files
    jail = site["jail"]
    assert access_of(jail, "web", [DATABASE]) == {DATABASE: {"read": "ok", "write": "ok"}}
    assert contained(site, "print(open('evaluator.py').read(3))") == {"output": '"""\n', "error": None}


def test_a_snippet_cannot_read_files_outside_its_view(site):
    for path in (site["outside"], "/etc/shadow", os.path.join(REPO, "README.md"), "/root/.bash_history"):
        result = contained(site, f"print(open({path!r}).read())")
        assert result["output"] == "" and result["error"].startswith(("PermissionError", "FileNotFoundError")), \
            (path, result)


def test_a_snippet_cannot_read_the_front_ends_environment_and_its_secret_key_is_absent(site):
    code = """
import glob, os
seen = []
for path in glob.glob('/proc/[0-9]*/environ'):
    try:
        if b'PASTEBIN_SECRET_KEY' in open(path, 'rb').read():
            seen.append(path)
    except OSError:
        pass
print(os.environ.get('PASTEBIN_SECRET_KEY'), seen)
open('/proc/WEB/environ', 'rb').read()
print('read it')
""".replace("WEB", str(site["web_pid"]))
    result = contained(site, code)
    # Neither its own environment nor any process it can see holds the key,
    # and the front end's environment cannot be opened (chroot: no /proc;
    # namespaces: the front end is outside its PID namespace).
    assert result["output"] == "None []\n", result
    assert result["error"].startswith(("FileNotFoundError", "PermissionError")), result
    assert SECRET_KEY not in result["error"]
    # control: the front end does hold it
    assert SECRET_KEY.encode() in open(f"/proc/{site['web_pid']}/environ", "rb").read()


def test_a_snippet_opens_no_tcp_connection_not_even_to_the_front_end(site):
    with socket.socket() as listener:   # control: a port on loopback that anyone else may reach
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        for port in (listener.getsockname()[1], site["port"]):
            result = contained(site, f"import socket; socket.create_connection(('127.0.0.1', {port}), 1); "
                                     "print('connected')")
            assert result == {"output": "", "error": "PermissionError: [Errno 1] Operation not permitted"}, result
        socket.create_connection(listener.getsockname(), 1).close()


def test_a_snippet_cannot_become_root_or_signal_the_front_end(site):
    assert contained(site, "import os; os.setuid(0)")["error"].startswith("PermissionError")
    web = site["web_pid"]
    for code in (f"import os, signal; os.kill({web}, signal.SIGKILL)", "import os, signal; os.kill(-1, signal.SIGKILL)"):
        result = contained(site, code)
        assert result["output"] == "", result
    result = contained(site, f"import os, signal; os.kill({web}, signal.SIGKILL)")
    assert result["error"].startswith(("PermissionError", "ProcessLookupError")), result
    assert _front_end_pid(site["jail"]) == web and os.path.exists(f"/proc/{web}")   # the same server, alive


def test_a_snippet_that_runs_forever_is_stopped_at_its_time_limit(site):
    # call_timeout and cpu_seconds are both 1 s: whichever the kernel or the
    # zygote hits first ends it
    result = contained(site, "while True: pass")
    assert result["output"] == "" and result["error"] in (
        "stopped: the snippet ran longer than its time limit",
        "stopped: Evaluator.evaluate: the call process was killed by SIGXCPU (its CPU time limit) before replying"), \
        result


def test_a_snippet_that_exits_is_reported(site):
    result = contained(site, "import os; print('bye'); os._exit(1)")
    assert result == {"output": "", "error": "stopped: Evaluator.evaluate: the call process exited with status 1 "
                                             "before replying"}, result
    # sys.exit is an exception like another: the snippet's result
    assert contained(site, "import sys; sys.exit(2)") == {"output": "", "error": "SystemExit: 2"}


def test_a_memory_bomb_a_fork_bomb_and_a_file_bomb_are_contained(site):
    result = contained(site, "x = []\nwhile True: x.append(bytearray(1 << 20))")
    assert result["error"] == "MemoryError" or result["error"].startswith("stopped:"), result
    result = contained(site, "import os\nwhile True: os.fork()")
    assert result == {"output": "", "error": "PermissionError: [Errno 1] Operation not permitted"}, result
    result = contained(site, "import tempfile\nf = open(tempfile.gettempdir() + '/big', 'wb')\n"
                             "while True: f.write(b'x' * 65536)")
    assert result["error"] == "OSError: [Errno 27] File too large", result
    # control: a file within the limit is written and read back
    code = "import tempfile\np = tempfile.gettempdir() + '/small'\nopen(p, 'w').write('x' * 1000)\nprint(len(open(p).read()))"
    assert contained(site, code) == {"output": "1000\n", "error": None}


def test_what_a_snippet_leaves_behind_is_not_seen_by_the_next(site):
    first = contained(site, """
import builtins, evaluator, tempfile, threading, time
builtins.LEFT = 'global'
evaluator.MAX_OUTPUT = 4096
open(tempfile.gettempdir() + '/left', 'w').write('x')
threading.Thread(target=time.sleep, args=(30,)).start()
print(tempfile.gettempdir())
""")
    folder = first["output"].strip()
    assert first["error"] is None and folder.startswith("/tmp/"), first
    second = contained(site, f"""
import builtins, evaluator, os, tempfile, threading
print(hasattr(builtins, 'LEFT'), evaluator.MAX_OUTPUT, os.listdir(tempfile.gettempdir()),
      os.path.exists({folder!r}), threading.active_count(), tempfile.gettempdir() != {folder!r})
""")
    assert second == {"output": "False 65536 [] False 1 True\n", "error": None}, second


def test_analyze_reports_the_evaluator_as_shut_in_and_the_database_as_the_front_ends(site):
    report = json.loads(pspy("analyze", "--jail", site["jail"], "--format", "json", check=True).stdout)
    principals = {p["name"]: p for p in report["principals"]}
    evaluator = principals["Evaluator"]
    assert evaluator["isolation"] == "per_call"
    assert evaluator["limits"] == {"call_timeout": 1, "cpu_seconds": 1, "memory": 128 * 2 ** 20, "processes": 15,
                                   "open_files": 32, "file_size": 2 ** 20}
    assert evaluator["writable"] == [] and evaluator["may_call"] == []
    assert principals["web"]["may_call"] == ["Evaluator.evaluate"] or principals["web"]["may_call"] == ["Evaluator"]
    assert DATABASE in principals["web"]["writable"]
    assert DATABASE not in evaluator["readable"]
