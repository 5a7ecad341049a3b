"""Create the snippet database: run by `pspy bootstrap` (pspy.toml `script`)
as the database's owner would, or by hand before `python manage.py
runserver`. Idempotent: Django applies only the migrations not applied yet.
Without a pspy runtime, as here, pspy.contrib.django opens the file that
pspy.toml names for the database "main"."""

import os
import sys

import django
from django.core.management import call_command

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dpaste.settings")
# SQLite creates the file, not its folder (which the owner holds whole).
os.makedirs(os.path.join(HERE, "db"), exist_ok=True)
django.setup()
call_command("migrate", verbosity=0)
