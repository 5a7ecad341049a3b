"""Settings of the paste-bin. The database is "main" of pspy.toml, reached
through pspy.contrib.django: under pspy the front end's statements run in
Data under its grants; without pspy it is Django's sqlite3 on the file."""

import os

from django.core.management.utils import get_random_secret_key

SECRET_KEY = os.environ.get("DPASTE_SECRET_KEY") or get_random_secret_key()
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = ["snippets"]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "dpaste.urls"
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]
WSGI_APPLICATION = "dpaste.wsgi.application"

DATABASES = {"default": {"ENGINE": "pspy.contrib.django", "NAME": "main"}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
