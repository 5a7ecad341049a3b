"""A short scripted session against zoobank's JSON API: register, transfer, check.

    python workload.py http://127.0.0.1:8080
"""

import json
import sys
import time
import urllib.error
import urllib.request


def call(base, method, path, body=None, token=None):
    req = urllib.request.Request(base + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def main(base):
    for _ in range(100):
        try:
            urllib.request.urlopen(base + "/", timeout=1).read()
            break
        except OSError:
            time.sleep(0.1)
    suffix = str(int(time.time()))
    alice, bob = f"alice{suffix}", f"bob{suffix}"
    _, a = call(base, "POST", "/api/register", {"username": alice, "password": "alice-pw"})
    call(base, "POST", "/api/register", {"username": bob, "password": "bob-pw"})
    print(f"registered {alice} and {bob} (10 zoobars each)")
    status, body = call(base, "POST", "/api/transfer", {"recipient": bob, "zoobars": 3}, token=a["token"])
    print(f"{alice} sends 3 zoobars to {bob}: HTTP {status} {body}")
    for user in (alice, bob):
        print(f"balance of {user}: {call(base, 'GET', f'/api/balance/{user}')[1]['zoobars']}")
    status, body = call(base, "POST", "/api/transfer", {"recipient": bob, "zoobars": 1}, token="forged")
    print(f"transfer with a forged token: HTTP {status} {body}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080")
