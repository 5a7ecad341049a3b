"""zoobank's front end (the principal `web`): a JSON API and a few HTML pages.

Under pspy, `Auth` and the bank functions imported here are RPC stubs: this
process cannot open db/cred/ or db/bank/ itself.
"""

import os
import secrets

from flask import Flask, jsonify, redirect, render_template_string, request
from werkzeug.exceptions import HTTPException

import bank
import pspy
from auth import Auth

app = Flask(__name__)
app.secret_key = os.environ.get("ZOOBANK_SECRET_KEY") or secrets.token_hex(16)
auth = Auth()

# Every error response of the API says what became of the request, so that a
# client knows whether it may send it again: "not_applied" when nothing was
# changed (a service refused it, or it never reached the provider),
# "unknown" when the provider received it and gave no reply (it died, or ran
# past its timeout): it may have been applied. A transfer sent with a "ref"
# can then be sent again safely (see bank.transfer).
REFUSED = {ValueError: 400, LookupError: 404, PermissionError: 403}
UNDELIVERED = {pspy.ServiceUnavailable: (503, "not_applied"),
               pspy.CallInterrupted: (503, "unknown"),
               pspy.ServiceTimeout: (504, "unknown")}


def _error(message, status, outcome):
    return jsonify({"error": message, "outcome": outcome}), status


def _fail(exc):
    for cls, status in REFUSED.items():
        if isinstance(exc, cls):
            return _error(str(exc), status, "not_applied")
    raise exc


@app.errorhandler(pspy.ServiceUnavailable)
@app.errorhandler(pspy.CallInterrupted)
@app.errorhandler(pspy.ServiceTimeout)
def provider_down(exc):
    """A provider that is down or died mid-call, for any route: 503 (504 for a timeout), not a hang."""
    for cls, (status, outcome) in UNDELIVERED.items():
        if isinstance(exc, cls):
            return _error(str(exc), status, outcome)
    raise exc


@app.errorhandler(Exception)
def unexpected(exc):
    """Any other failure still says what became of the request. A caller the
    provider refused (pspy.PermissionDenied) changed nothing; anything else (a
    service's own unexpected error, a reply that could not be encoded) was
    raised by a provider that received the call: it may have been applied."""
    if isinstance(exc, HTTPException):   # a 404, a 405: Flask's own answers
        return exc
    if isinstance(exc, pspy.PermissionDenied):
        return _error(str(exc), 403, "not_applied")
    app.logger.error("unexpected error", exc_info=exc)
    return _error(f"{type(exc).__name__}: {exc}", 500, "unknown")


def _json_fields(*names):
    data = request.get_json(silent=True)
    if not isinstance(data, dict) or any(n not in data for n in names):
        raise ValueError(f"expected a JSON object with {', '.join(names)}")
    return [data[n] for n in names]


def _bearer():
    header = request.headers.get("Authorization", "")
    return header[7:] if header.startswith("Bearer ") else None


@app.post("/api/register")
def api_register():
    try:
        username, password = _json_fields("username", "password")
        token = auth.register(username, password)
        bank.new_account(username)
    except (ValueError, LookupError, PermissionError) as e:
        return _fail(e)
    return jsonify({"token": token})


@app.post("/api/login")
def api_login():
    try:
        username, password = _json_fields("username", "password")
        return jsonify({"token": auth.login(username, password)})
    except (ValueError, LookupError, PermissionError) as e:
        return _fail(e)


@app.post("/api/transfer")
def api_transfer():
    token = _bearer()
    sender = auth.user_for_token(token) if token else None
    if sender is None:
        return _error("missing or invalid bearer token", 401, "not_applied")
    try:
        recipient, zoobars = _json_fields("recipient", "zoobars")
        ref = request.get_json().get("ref")   # optional: see bank.transfer
        left = bank.transfer(sender, recipient, zoobars, token, ref)
    except (ValueError, LookupError, PermissionError) as e:
        return _fail(e)
    return jsonify({"sender": sender, "recipient": recipient, "zoobars": left, "ref": ref})


@app.get("/api/balance/<username>")
def api_balance(username):
    try:
        return jsonify({"username": username, "zoobars": bank.balance(username)})
    except LookupError as e:
        return _fail(e)


# --- pages for a person ------------------------------------------------------------

PAGE = """<!doctype html><title>zoobank</title>
<h1>zoobank</h1>
{% if message %}<p><b>{{ message }}</b></p>{% endif %}
{% if user %}
  <p>Signed in as {{ user }}; you have {{ zoobars }} zoobars.</p>
  <form method=post action="/transfer">
    Send <input name=zoobars size=4> zoobars to <input name=recipient>
    <button>Transfer</button></form>
  <form method=post action="/logout"><button>Sign out</button></form>
{% else %}
  <form method=post action="/login">
    <input name=username placeholder=username> <input name=password type=password placeholder=password>
    <button name=action value=login>Sign in</button>
    <button name=action value=register>Register</button></form>
{% endif %}
"""


def _page(message=None):
    token = request.cookies.get("zoobank_token")
    user = auth.user_for_token(token) if token else None
    zoobars = bank.balance(user) if user else None
    return render_template_string(PAGE, user=user, zoobars=zoobars, message=message)


@app.get("/")
def index():
    return _page()


@app.post("/login")
def login_page():
    username, password = request.form.get("username", ""), request.form.get("password", "")
    try:
        if request.form.get("action") == "register":
            token = auth.register(username, password)
            bank.new_account(username)
        else:
            token = auth.login(username, password)
    except (ValueError, PermissionError) as e:
        return _page(str(e)), 400
    response = redirect("/")
    response.set_cookie("zoobank_token", token, httponly=True, samesite="Strict")
    return response


@app.post("/transfer")
def transfer_page():
    token = request.cookies.get("zoobank_token")
    sender = auth.user_for_token(token) if token else None
    if sender is None:
        return redirect("/")
    try:
        bank.transfer(sender, request.form.get("recipient", ""), int(request.form.get("zoobars", "0")), token)
    except (ValueError, LookupError, PermissionError) as e:
        return _page(str(e)), 400
    return redirect("/")


@app.post("/logout")
def logout_page():
    response = redirect("/")
    response.delete_cookie("zoobank_token")
    return response


if __name__ == "__main__":
    host = os.environ.get("ZOOBANK_HOST", "127.0.0.1")
    port = int(os.environ.get("ZOOBANK_PORT", "8080"))
    app.run(host=host, port=port, threaded=True)
