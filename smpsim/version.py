"""smpsim's version: the one place it is written (pyproject.toml reads it from here). A leaf module, so that
what records the version (summary.json, provenance.json) needs nothing of the package's ``__init__``."""

__version__ = "0.1.0"
