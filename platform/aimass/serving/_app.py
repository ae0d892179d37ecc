"""Moved to aimass.serving.app: Serve configs written before the move name this import path."""
from aimass.serving.app import build  # noqa: F401
