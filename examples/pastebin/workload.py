"""A client of the paste-bin, and a short scripted session with it.

    python workload.py http://127.0.0.1:8000

`Client` is one person's browser: it keeps cookies (Django's CSRF token)
and speaks both the JSON API (`api`, `create`, `run`) and the HTML pages
(`page`, `form`). The tests reuse it.
"""

import http.cookiejar
import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


class Client:
    def __init__(self, base, timeout=10):
        self.base = base.rstrip("/")
        self.timeout = timeout
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def _open(self, req, timeout=None):
        try:
            with self.opener.open(req, timeout=timeout or self.timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def api(self, method, path, body=None, timeout=None):
        """(HTTP status, decoded JSON) of a call to the JSON API."""
        req = urllib.request.Request(self.base + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        status, text = self._open(req, timeout)
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def page(self, path):
        """(HTTP status, HTML) of a page, redirects followed."""
        return self._open(urllib.request.Request(self.base + path))

    def form(self, path, fields, page=None):
        """(HTTP status, HTML) after submitting the form of ``page`` (default:
        ``path``) with its CSRF token, redirects followed."""
        _, html = self.page(page or path)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
        fields = dict(fields, csrfmiddlewaretoken=token.group(1) if token else "")
        return self._open(urllib.request.Request(self.base + path, method="POST",
                                                 data=urllib.parse.urlencode(fields).encode()))

    # The JSON API.
    def pastes(self):
        return self.api("GET", "/api/pastes")

    def create(self, code, title="snippet"):
        return self.api("POST", "/api/pastes", {"title": title, "code": code})

    def paste(self, paste_id):
        return self.api("GET", f"/api/pastes/{paste_id}")

    def run(self, paste_id, timeout=None):
        return self.api("POST", f"/api/pastes/{paste_id}/run", timeout=timeout)

    def evaluate(self, code):
        """Save ``code`` as a paste and run it: (HTTP status, result)."""
        status, body = self.create(code)
        if status != 201:
            return status, body
        return self.run(body["id"])


def wait_until_up(base, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(base + "/api/pastes", timeout=2):
                return
        except (OSError, urllib.error.URLError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main(base):
    client = Client(base)
    status, result = client.evaluate("print(sum(range(10)))")
    print("run:", status, result)
    status, result = client.evaluate("open('db/pastes.sqlite3').read(16)")
    print("read the paste database:", status, result)   # refused under pspy, not without
    print("pastes:", [p["title"] for p in client.pastes()[1]["pastes"]])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"))
