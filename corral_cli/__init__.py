"""corral_cli: the ``corral`` command-line client (see README.md)."""

VERSION = "0.1.0"
