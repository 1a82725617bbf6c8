"""The framework's floor: a bare Flask app answering /healthz's JSON, served like tokenserver.

`make bench` runs it under gunicorn with the same gunicorn.conf.py and worker count, in the
same run, and reports every route against it (column `x bare`).
"""

from flask import Flask, Response, jsonify

app = Flask(__name__)


@app.get("/healthz")
def healthz() -> Response:
    """The same answer as tokenserver's /healthz, and nothing else."""
    return jsonify(status="ok")
