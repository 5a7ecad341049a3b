#!/usr/bin/env python
"""Django's command-line utility for the paste-bin.

Under pspy the front end is `python manage.py runserver --noreload ADDR`
(pspy.toml): the autoreloader would restart the server in a child process
that pspy did not start, and watch files the jail keeps read-only.
"""

import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pastebin.settings")
    from django.core.management import execute_from_command_line
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
