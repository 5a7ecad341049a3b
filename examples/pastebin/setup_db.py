"""Create the paste database (run by `pspy bootstrap` as the pspy.toml
`script`, or by hand before `python manage.py runserver`). Idempotent:
Django applies only the migrations not applied yet."""

import os

import django
from django.core.management import call_command

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pastebin.settings")
os.makedirs(os.path.join(os.path.dirname(os.path.abspath(__file__)), "db"), exist_ok=True)
django.setup()
call_command("migrate", verbosity=0)
