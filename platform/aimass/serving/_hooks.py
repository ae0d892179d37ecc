"""Moved to aimass.serving.hooks: replicas of clusters started before the move name this hook."""
from aimass.serving.hooks import loopback  # noqa: F401
