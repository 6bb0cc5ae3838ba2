"""``python -m cifer`` is the ``cifer`` command (localnets start nodes this way)."""

from cifer.app.cli.main import app

if __name__ == "__main__":
    app()
