"""The shared settings module's helpers: URLs shown without their secrets, and private folders in the shared
temp folder."""
from __future__ import annotations

import os

import pytest

from aimass.errors import BackendError
from aimass.settings import private_dir, shown_url


@pytest.mark.parametrize("url, shown", [
    ("postgresql://u:pw@db:5432/aimass", "postgresql://u:***@db:5432/aimass"),
    ("https://ghp_token@github.com/o/r.git", "https://***@github.com/o/r.git"),
    ("s3://key:secret@bucket/prefix", "s3://key:***@bucket/prefix"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("sqlite:////home/me/.aimass/mlflow.db", "sqlite:////home/me/.aimass/mlflow.db"),
    ("/a/local/path", "/a/local/path"),
    ("git@github.com:o/r.git", "git@github.com:o/r.git"),  # no secret in an ssh address
])
def test_a_url_is_shown_without_its_secret(url, shown):
    assert shown_url(url) == shown


def test_a_private_dir_is_this_users_alone(tmp_path, monkeypatch):
    fresh = private_dir(tmp_path / "a" / "b")
    assert fresh.is_dir() and fresh.stat().st_mode & 0o777 == 0o700
    opened = tmp_path / "open"
    opened.mkdir(mode=0o755)
    opened.chmod(0o755)
    assert private_dir(opened).stat().st_mode & 0o777 == 0o700  # made private, not refused
    (tmp_path / "file").write_text("")
    with pytest.raises(BackendError, match="is not a folder of this user's"):
        private_dir(tmp_path / "file")
    mine = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: mine + 1)  # another user made it first
    with pytest.raises(BackendError, match=f"owner uid {mine}"):
        private_dir(opened)
