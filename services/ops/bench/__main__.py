"""`python -m services.ops.bench` (`make bench`)."""

from .cli import app

app()
