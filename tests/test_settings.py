"""The shared settings module's helpers: URLs shown without their secrets, private folders in the shared
temp folder, and credentials handed to child processes through a private file."""
from __future__ import annotations

import json
import os

import pytest
from pydantic import ValidationError

from aimass.errors import BackendError
from aimass.settings import Settings, private_dir, redacted, shown_url


@pytest.mark.parametrize("url, shown", [
    ("postgresql://u:pw@db:5432/aimass", "postgresql://u:***@db:5432/aimass"),
    ("https://ghp_token@github.com/o/r.git", "https://***@github.com/o/r.git"),
    ("s3://key:secret@bucket/prefix", "s3://key:***@bucket/prefix"),
    ("s3://AKIA:wJal/rXUt@bucket/data", "s3://AKIA:***@bucket/data"),  # an unencoded "/" in the secret
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("sqlite:////home/me/.aimass/mlflow.db", "sqlite:////home/me/.aimass/mlflow.db"),
    ("/a/local/path", "/a/local/path"),
    ("git@github.com:o/r.git", "git@github.com:o/r.git"),  # no secret in an ssh address
    # libpq takes its password from the query string; a signed or token URL carries its secret there
    ("postgresql://db/aimass?user=svc&password=hunter2", "postgresql://db/aimass?user=svc&password=***"),
    ("postgresql://u@h/db?sslmode=require&PASSWORD=x", "postgresql://***@h/db?sslmode=require&PASSWORD=***"),
    ("https://mlflow.example/?token=abc&x=1", "https://mlflow.example/?token=***&x=1"),
    ("https://b.example/o?X-Amz-Signature=f00&X-Amz-Date=1", "https://b.example/o?X-Amz-Signature=***&X-Amz-Date=1"),
    ("postgresql://u@h/db?password=ab;cd#ef", "postgresql://***@h/db?password=***"),  # the driver reads it whole
    ("http://127.0.0.1:5000/?experiment=3", "http://127.0.0.1:5000/?experiment=3"),
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


def _from_env(env: dict[str, str], monkeypatch) -> Settings:
    """Settings as a child process given `env` would parse them."""
    for k in [k for k in os.environ if k.startswith("AIMASS_")]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return Settings()


def test_credentials_reach_a_child_through_a_private_file_not_its_variables(tmp_path, monkeypatch):
    secret = "pw-s3cr3t"
    s = Settings(home=tmp_path / "home", catalog_url=f"postgresql://u:{secret}@db:5432/aimass",
                 mlflow_tracking_uri="http://127.0.0.1:5000", dvc_remote=f"s3://key:{secret}@bucket/x",
                 feedback_positive=["play>=30"])
    env = s.as_env(secrets_to=tmp_path / "sec")
    assert not any(secret in v for v in env.values()), env
    assert env["AIMASS_MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"  # no credential: stays a variable
    path = tmp_path / "sec" / env["AIMASS_SECRETS_FILE"].rsplit("/", 1)[1]
    assert path.stat().st_mode & 0o777 == 0o600 and (tmp_path / "sec").stat().st_mode & 0o777 == 0o700
    child = _from_env(env, monkeypatch)
    assert child.model_dump(exclude={"secrets_file"}) == s.model_dump(exclude={"secrets_file"})
    # an actor's arguments (kept in Ray's control store) name the same file
    data = s.dump(secrets_to=tmp_path / "sec")
    assert secret not in json.dumps(data) and data["secrets_file"] == env["AIMASS_SECRETS_FILE"]
    assert Settings(**data).model_dump(exclude={"secrets_file"}) == s.model_dump(exclude={"secrets_file"})
    # a running actor whose environment still holds older values: the dump beats them, unset ones included
    for k, v in {"AIMASS_CATALOG_URL": "postgresql://db1/x", "AIMASS_RETRAIN_MIN_EVENTS": "100",
                 "AIMASS_MONITOR_INTERVAL_S": "60"}.items():
        monkeypatch.setenv(k, v)
    off = s.model_copy(update={"monitor_interval_s": None})
    again = Settings(**off.dump(secrets_to=tmp_path / "sec"))
    assert (again.catalog_url, again.retrain_min_events, again.monitor_interval_s) == (s.catalog_url, None, None)
    monkeypatch.setenv("AIMASS_SECRETS_FILE", env["AIMASS_SECRETS_FILE"])  # credentials since removed
    plain = Settings(**s.model_copy(update={"catalog_url": None, "dvc_remote": None}).dump(secrets_to=tmp_path / "sec"))
    assert plain.catalog_url is None and plain.dvc_remote is None
    # the same credentials name the same file; changed ones a new file (the old one stays for who reads it)
    assert s.as_env(secrets_to=tmp_path / "sec") == env
    rotated = s.model_copy(update={"catalog_url": "postgresql://u:new@db:5432/aimass"})
    moved = rotated.as_env(secrets_to=tmp_path / "sec")
    assert moved["AIMASS_SECRETS_FILE"] != env["AIMASS_SECRETS_FILE"] and path.exists()
    # without a folder (a child process's environment, never logged) every value is a variable
    assert s.as_env()["AIMASS_CATALOG_URL"] == s.catalog_url and "AIMASS_SECRETS_FILE" not in s.as_env()


def test_a_value_set_otherwise_wins_over_the_secrets_file_and_a_bad_file_is_refused(tmp_path, monkeypatch):
    f = tmp_path / "s.json"
    f.write_text(json.dumps({"catalog_url": f"sqlite:///{tmp_path}/from-file.db", "dvc_remote": "/from/file"}))
    f.chmod(0o600)
    s = _from_env({"AIMASS_SECRETS_FILE": str(f), "AIMASS_DVC_REMOTE": "/from/env"}, monkeypatch)
    assert (s.catalog_url, s.dvc_remote) == (f"sqlite:///{tmp_path}/from-file.db", "/from/env")
    for text, why in [(None, "cannot be read"), ("not json", "cannot be read"), ('{"home": "/x"}', "keys are among"),
                      ("[1]", "keys are among"), ('{"dvc_remote": "/x"}', r"readable by others \(mode 644\)")]:
        bad = tmp_path / "bad.json"
        bad.unlink(missing_ok=True)
        if text is not None:
            bad.write_text(text)
            bad.chmod(0o644 if "others" in why else 0o600)
        with pytest.raises(ValidationError, match=f"secrets_file .*{why}") as err:
            Settings(dvc_remote="s3://k:s3cr3t@b", secrets_file=bad)
        # the error never shows the values it was given
        assert "s3cr3t" not in str(err.value) and "input_value" not in str(err.value)


def test_a_query_string_secret_stays_out_of_a_child_process_environment(tmp_path):
    s = Settings(home=tmp_path, catalog_url="postgresql://db/aimass?user=svc&password=hunter2")
    env = s.as_env(["catalog_url"], secrets_to=tmp_path / "secrets")
    assert "hunter2" not in json.dumps(env) and "AIMASS_SECRETS_FILE" in env
    assert Settings(**{k.removeprefix("AIMASS_").lower(): v for k, v in env.items()}).catalog_url == s.catalog_url


def test_a_message_is_redacted_url_by_url():
    msg = ("API request to https://user:tok3n@mlflow.example/api/2.0/x failed; "
           "catalog 'postgresql://u:pw9@db/aimass' and http://127.0.0.1:5000 kept")
    out = redacted(msg)
    assert "tok3n" not in out and "pw9" not in out
    assert "https://user:***@mlflow.example/api/2.0/x" in out and "'postgresql://u:***@db/aimass'" in out
    assert "http://127.0.0.1:5000 kept" in out
    # a password with a quote in it (RFC 3986 allows it unencoded) does not end the URL before its "@"
    out = redacted("API request to http://u:to'ken@127.0.0.1:1/api failed; \"https://t\"ok@h/x\"")
    assert "ken" not in out and "ok@" not in out and "http://u:***@127.0.0.1:1/api failed" in out, out


def test_an_error_line_is_the_first_line_masked_or_the_type():
    from aimass.settings import error_line

    e = ConnectionError("API request to https://ops:s3cret@mlflow.example/api failed\ntraceback follows")
    assert error_line(e) == "API request to https://ops:***@mlflow.example/api failed"
    assert error_line(TimeoutError()) == "TimeoutError"


def test_a_private_write_is_whole_or_not_at_all(tmp_path, monkeypatch):
    """A record rewritten when the disk is full (or the process killed mid-write) keeps its old content: an empty
    deployment record made every serving command fail."""
    from aimass.settings import write_private

    f = tmp_path / "record.json"
    write_private(f, '{"old": 1}')
    assert f.stat().st_mode & 0o777 == 0o600

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        write_private(f, '{"new": 2}')
    assert f.read_text() == '{"old": 1}' and [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_an_empty_home_is_refused_not_the_current_folder(tmp_path, monkeypatch):
    """AIMASS_HOME= left empty (or --home '') resolved to the current folder: a catalog wherever one ran."""
    monkeypatch.chdir(tmp_path)
    for bad in ("", "  "):
        with pytest.raises(ValidationError, match="(?s)home.*must name a folder"):
            _from_env({"AIMASS_HOME": bad}, monkeypatch)
        with pytest.raises(ValidationError, match="must name a folder"):
            Settings(home=bad)
    assert list(tmp_path.iterdir()) == []


def test_relative_store_paths_are_resolved_once_against_the_folder_they_were_given_in(tmp_path, monkeypatch):
    """A retrain in the serving cluster, a replica, a worker run in other folders: a relative registry, remote or
    SQLite store named another one there (the scheduler's retrain read the home's folder and never retrained)."""
    monkeypatch.chdir(tmp_path)
    s = Settings(home="h", data_registry="reg", dvc_remote="remote", catalog_url="sqlite:///cat.db",
                 mlflow_tracking_uri="sqlite:///ml.db")
    assert (s.data_registry, s.dvc_remote) == (str(tmp_path / "reg"), str(tmp_path / "remote"))
    assert (s.catalog_url, s.mlflow_tracking_uri) == (f"sqlite:///{tmp_path}/cat.db", f"sqlite:///{tmp_path}/ml.db")
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    child = _from_env(s.as_env(), monkeypatch)  # what a process started elsewhere parses
    assert (child.registry_path, child.remote, child.catalog) == (s.registry_path, s.remote, s.catalog)
    urls = Settings(dvc_remote="s3://b/x", data_registry="git@host:x.git", mlflow_tracking_uri="http://127.0.0.1:5000")
    assert (urls.dvc_remote, urls.data_registry, urls.mlflow_tracking_uri) == (
        "s3://b/x", "git@host:x.git", "http://127.0.0.1:5000")


@pytest.mark.parametrize("name, value, says", [
    ("AIMASS_MONITOR_WINDOW_S", "inf", "finite number"), ("AIMASS_RETRAIN_RETRY_S", "nan", "finite number"),
    ("AIMASS_EXPERIMENT_METRIC", "bogus", "experiment_metric"), ("AIMASS_EXPERIMENT_METRIC", "Skip_rate", "pattern")])
def test_a_setting_that_would_fail_only_later_is_refused_at_the_start(name, value, says, monkeypatch):
    """`inf` passed every bound above zero and a metric that is no rate passed as text: both were accepted at
    start and failed each scheduled drift report, or left every canary unstarted."""
    with pytest.raises(ValidationError, match=says):
        _from_env({name: value}, monkeypatch)
    assert _from_env({"AIMASS_EXPERIMENT_METRIC": "skip_rate"}, monkeypatch).experiment_metric == "skip_rate"
