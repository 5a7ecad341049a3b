"""zoobank's API says what became of a request that failed: every error
response carries "outcome", "not_applied" only when nothing can have
changed. The front end runs here in-process, its providers replaced by
stand-ins that fail the way pspy's stubs do (no root needed)."""

import importlib.util
import os
import sys

import pytest

import pspy
from conftest import ZOOBANK


@pytest.fixture(scope="module")
def zoobank():
    sys.path.insert(0, ZOOBANK)
    try:
        spec = importlib.util.spec_from_file_location("zoobank_front_end", os.path.join(ZOOBANK, "app.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(ZOOBANK)
    return module


@pytest.fixture
def transfer_failing(zoobank, monkeypatch):
    """POST a transfer whose bank.transfer raises ``exc``; (status, body)."""
    monkeypatch.setattr(zoobank.auth, "user_for_token", lambda token: "alice" if token == "t" else None)

    def send(exc):
        def transfer(*args):
            raise exc
        monkeypatch.setattr(zoobank.bank, "transfer", transfer)
        response = zoobank.app.test_client().post("/api/transfer", json={"recipient": "bob", "zoobars": 1},
                                                  headers={"Authorization": "Bearer t"})
        return response.status_code, response.get_json()
    return send


@pytest.mark.parametrize("exc, status, outcome", [
    (ValueError("alice has only 0 zoobars"), 400, "not_applied"),
    (LookupError("no user 'bob'"), 404, "not_applied"),
    (PermissionError("invalid token for the sender"), 403, "not_applied"),
    (pspy.ServiceUnavailable("Bank is not running"), 503, "not_applied"),
    (pspy.PermissionDenied("web may not call bank.transfer"), 403, "not_applied"),
    (pspy.CallInterrupted("Bank died during the call"), 503, "unknown"),
    (pspy.ServiceTimeout("no reply within 5 s"), 504, "unknown"),
    (pspy.RemoteError("ServiceUnavailable", "Auth is not running"), 500, "unknown"),
    (pspy.SerializationError("bank.transfer's return value cannot be encoded"), 500, "unknown"),
    (RuntimeError("a bug in the front end"), 500, "unknown"),
], ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v))
def test_every_error_response_says_whether_the_transfer_may_have_been_applied(transfer_failing, exc, status,
                                                                              outcome):
    # A failure the front end does not expect is named with its type.
    message = f"{type(exc).__name__}: {exc}" if status == 500 else str(exc)
    assert transfer_failing(exc) == (status, {"error": message, "outcome": outcome})


def test_a_transfer_that_succeeds_and_flasks_own_errors_keep_their_answers(zoobank, monkeypatch):
    monkeypatch.setattr(zoobank.auth, "user_for_token", lambda token: "alice")
    monkeypatch.setattr(zoobank.bank, "transfer", lambda *args: 9)
    client = zoobank.app.test_client()
    response = client.post("/api/transfer", json={"recipient": "bob", "zoobars": 1},
                           headers={"Authorization": "Bearer t"})
    assert response.status_code == 200 and response.get_json()["zoobars"] == 9
    assert client.get("/no/such/page").status_code == 404     # not turned into a 500
    assert client.get("/api/transfer").status_code == 405
