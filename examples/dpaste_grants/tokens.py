"""Deleting a snippet with its token: a service of Data, the database's
owner, the only principal that reads delete_token (pspy.toml). In Data,
pspy.contrib.django is Django's sqlite3 on the file. Without pspy the
decorator does nothing and this runs in the server."""

import hmac
import os

import django

import pspy

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dpaste.settings")
django.setup()   # Data imports this module alone; in the server, a no-op


@pspy.service(service_provider="Data", callers=["web"])
def delete_snippet(snippet_id, token):
    """True when the snippet existed and ``token`` was its delete token."""
    from snippets.models import Snippet

    expected = Snippet.with_tokens.filter(pk=snippet_id).values_list("delete_token", flat=True).first()
    if expected is None or not isinstance(token, str) or not hmac.compare_digest(expected, token):
        return False
    Snippet.with_tokens.filter(pk=snippet_id).delete()
    return True
