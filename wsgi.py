"""The WSGI entry point gunicorn serves: `gunicorn wsgi:app`."""

from tokenserver import create_app

app = create_app()
