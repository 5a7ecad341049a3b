"""Settings of the paste-bin. What differs between machines comes from the
environment, which under pspy reaches the front end only through pspy.toml's
`env` (the evaluator never sees the secret key)."""

import os
from pathlib import Path

from django.core.management.utils import get_random_secret_key

BASE_DIR = Path(__file__).resolve().parent.parent

# Without PASTEBIN_SECRET_KEY each start gets a fresh key: forms opened
# before a restart then fail their CSRF check, nothing worse.
SECRET_KEY = os.environ.get("PASTEBIN_SECRET_KEY") or get_random_secret_key()
DEBUG = os.environ.get("PASTEBIN_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

INSTALLED_APPS = ["pastes"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
ROOT_URLCONF = "pastebin.urls"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
}]
WSGI_APPLICATION = "pastebin.wsgi.application"

# The pastes: owned by the front end (pspy.toml's perms), out of the
# evaluator's reach.
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db" / "pastes.sqlite3"}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
