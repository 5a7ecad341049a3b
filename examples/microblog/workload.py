"""A client of the microblog, and a short scripted session with it.

    python workload.py http://127.0.0.1:8090

`Client` is one person's browser: it keeps the session cookie, and speaks
both the JSON API (`api`) and the HTML pages (`page`, `form`). The tests
reuse it.
"""

import http.cookiejar
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


class Client:
    def __init__(self, base):
        self.base = base.rstrip("/")
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def _open(self, req):
        try:
            with self.opener.open(req, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def api(self, method, path, body=None):
        """(HTTP status, decoded JSON) of a call to the JSON API."""
        req = urllib.request.Request(self.base + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        status, text = self._open(req)
        return status, json.loads(text)

    def page(self, path):
        """(HTTP status, HTML) of a page, redirects followed."""
        return self._open(urllib.request.Request(self.base + path))

    def form(self, path, fields):
        """(HTTP status, HTML) after submitting a form, redirects followed."""
        return self._open(urllib.request.Request(self.base + path, method="POST",
                                                 data=urllib.parse.urlencode(fields).encode()))

    # The JSON API, one method per call.
    def register(self, username, password):
        return self.api("POST", "/api/register", {"username": username, "password": password})

    def login(self, username, password):
        return self.api("POST", "/api/login", {"username": username, "password": password})

    def logout(self):
        return self.api("POST", "/api/logout")

    def post(self, text):
        return self.api("POST", "/api/messages", {"text": text})

    def follow(self, username):
        return self.api("POST", f"/api/users/{urllib.parse.quote(username)}/follow")

    def unfollow(self, username):
        return self.api("POST", f"/api/users/{urllib.parse.quote(username)}/unfollow")

    def timeline(self):
        return self.api("GET", "/api/timeline")

    def public(self):
        return self.api("GET", "/api/public")

    def user(self, username):
        return self.api("GET", f"/api/users/{urllib.parse.quote(username)}")


def wait_until_up(base, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(base.rstrip("/") + "/public", timeout=1).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the microblog does not answer at {base}") from None
            time.sleep(0.1)


def texts(messages):
    return [m["text"] for m in messages]


def main(base):
    wait_until_up(base)
    suffix = str(int(time.time()))
    alice, bob = Client(base), Client(base)
    a, b = f"alice{suffix}", f"bob{suffix}"
    for client, name in ((alice, a), (bob, b)):
        client.register(name, f"{name}-pw")
        client.login(name, f"{name}-pw")
    print(f"registered and logged in {a} and {b}")
    print(f"{a} logs in with a wrong password: HTTP {Client(base).login(a, 'wrong')[0]}")
    bob.post(f"hello from {b}")
    alice.post(f"hello from {a}")
    alice.follow(b)
    print(f"{a} follows {b}; {a}'s timeline: {texts(alice.timeline()[1]['messages'])}")
    alice.unfollow(b)
    print(f"{a} unfollows {b}; {a}'s timeline: {texts(alice.timeline()[1]['messages'])}")
    print(f"public timeline: {texts(alice.public()[1]['messages'])[:5]}")
    alice.logout()
    print(f"{a} logs out; her timeline now: HTTP {alice.timeline()[0]}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8090")
