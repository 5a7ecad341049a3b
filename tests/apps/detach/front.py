"""The front end of the test app `detach`: it starts a daemon (double fork
and setsid, so not even its parent is a principal), has Keeper start a
helper, and answers GET / with Keeper's greeting."""

import http.server
import json
import os
import subprocess
import sys

import keeper

MARKER = os.environ.get("DETACH_MARKER", "pspy-detach-test")
DAEMON = "import os, time\nif os.fork(): os._exit(0)\nos.setsid()\ntime.sleep(600)"


class Greeting(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"keeper": keeper.hello()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    subprocess.run([sys.executable, "-c", DAEMON, MARKER + ":web"], check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    keeper.start_helper(MARKER + ":Keeper")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["DETACH_PORT"])), Greeting)
    server.serve_forever()
