"""The all-in-one lab: a real Nova deployment on 127.0.0.1 built from PyPI packages."""

from __future__ import annotations
