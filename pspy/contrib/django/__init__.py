"""A Django database backend over pspy's data grants: ``ENGINE = "pspy.contrib.django"``.

    DATABASES = {"default": {"ENGINE": "pspy.contrib.django", "NAME": "main"}}

NAME is the database's name in ``pspy.toml`` (``[databases.main]``), not a
file. Django loads the backend from ``base.py`` here; ``functions.py`` holds
what the database's owner runs for a Django caller.
"""
