"""The test suite run inside the front end, through its grants:

    pspy exec --jail JAIL web -- python manage.py test --keepdb --settings=dpaste.settings_test_through_grants

Django's test database is then the database "main" itself, reached as web
reaches it (--keepdb: web may not create or drop a database). Every
TestCase runs in a transaction that is rolled back, so nothing stays. A
test whose view calls Data (deleting with a token) cannot pass so: Data
reads on a connection of its own, which does not see web's uncommitted
snippet."""

from .settings import *  # noqa: F401,F403
from .settings import DATABASES

DATABASES["default"]["TEST"] = {"NAME": "main"}
