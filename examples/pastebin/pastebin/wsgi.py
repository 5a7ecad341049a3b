"""The WSGI application, for a WSGI server as the front end, e.g.
`python -m gunicorn -w 2 -b 127.0.0.1:8000 pastebin.wsgi`."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pastebin.settings")
application = get_wsgi_application()
