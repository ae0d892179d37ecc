"""Typed settings: parsed once at an entry point (CLI, SDK call without explicit settings, a server's
start-up) and passed down. This is the only module that reads AIMASS_* environment variables.

The defaults are the embedded default of docs/architecture: one home folder holds the catalog, the data
registry and its DVC remote; each piece is swapped for its scale-out counterpart by setting a URL.
"""
from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
# The settings that may carry a credential (postgresql://user:password@..., https://token@...).
CREDENTIAL_FIELDS = ("catalog_url", "data_registry", "dvc_remote", "mlflow_tracking_uri", "ray_address")


class Settings(BaseSettings):
    # an error names the field, never its value: a value may be a URL with a password
    # no NaN or infinity either: `inf` passed every bound above zero and failed only later (each scheduled drift
    # report refused its window)
    model_config = SettingsConfigDict(env_prefix="AIMASS_", extra="forbid", frozen=True, hide_input_in_errors=True,
                                      allow_inf_nan=False)

    home: Path = Field(Path(".aimass"), description="Folder holding all embedded state.")
    catalog_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in home.")
    data_registry: str | None = Field(
        None, description="Path or git URL of the git+DVC data registry; default home/data-registry."
    )
    dvc_remote: str | None = Field(
        None, description="DVC remote URL (a folder, s3://..., gs://...); default home/dvc-remote."
    )
    mlflow_tracking_uri: str | None = Field(None, description="Default SQLite store in home.")
    ray_address: str | None = Field(None, description="Existing Ray cluster; default a local one.")
    secrets_file: Path | None = Field(None, description=(
        "A JSON object of credential-bearing settings (catalog_url, data_registry, dvc_remote, "
        "mlflow_tracking_uri, ray_address), readable by its owner only; a value set otherwise wins. Serving "
        "replicas and the cluster's actors get their store URLs this way when a URL carries a credential: "
        "Ray logs a runtime environment's variables whole."))
    host: str = Field("127.0.0.1", description="Address every embedded listener binds to.")
    # Serving (aimass.serving). The serve_model/serve_ranker/serve_endpoint fields are how a deployment
    # tells its replicas (or a bare `bentoml serve`) what to load: they arrive as AIMASS_* variables.
    serve_port: int = Field(8000, ge=1, le=65535, description="HTTP port of the Ray Serve ingress.")
    serve_proxy: Literal["auto", "haproxy", "default"] = Field(
        "auto", description="Serve's HTTP path: HAProxy (throughput mode) when `haproxy` is installed, "
                            "else Serve's default proxy.")
    serve_model: str | None = Field(None, description="Model ref a serving process loads (NAME/V).")
    serve_ranker: str | None = Field(None, description="Ranking-stage model ref of a multi-stage service.")
    serve_endpoint: str | None = Field(None, description="Endpoint name of a serving process.")
    serve_max_body_bytes: int = Field(65536, ge=1024, description="Largest accepted request body.")
    console_port: int = Field(8501, ge=1, le=65535, description="HTTP port of the operator console (Streamlit).")
    # Feedback (aimass.events): which event types count as positive or negative, Gorse-style: a bare type
    # ("like") or a type with a value threshold ("play>=30", "rating<=2"). A type named nowhere is refused.
    feedback_positive: list[str] = Field(["click", "like", "purchase", "play", "rating>=4"],
                                         description="Event types (with thresholds) that extend a history.")
    feedback_negative: list[str] = Field(["skip", "dislike", "rating<=2"],
                                         description="Event types (with thresholds) that exclude an item.")
    feedback_neutral: list[str] = Field(["impression", "view", "rating"],
                                        description="Known event types that are neither (impressions).")
    feedback_max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest POST /feedback body.")
    # at most a year: a time past pandas' range (2262) once stored would break every read of the append-only log
    feedback_max_future_s: float = Field(86400.0, ge=0, le=366 * 86400,
                                         description="How far ahead a timestamp may be (at most a year).")
    online_poll_s: float = Field(0.2, gt=0, le=10, description="How often a replica reads new events.")
    serve_cache_users: int = Field(10_000, ge=0, description=(
        "Users whose /recommend answers a replica keeps per served version (0: no cache), at most 4 answers a "
        "user (one per k and exclude_seen asked, the latest). An answer is kept until the user's next positive "
        "or negative feedback event; cold starts, explicit histories, exclusions and filters are never cached."))
    serve_cache_warm_users: int = Field(10_000, ge=0, description=(
        "Users whose answer to the default request (k=10, seen items excluded) a replica computes into its cache "
        "when it loads a version, the most active first (at most serve_cache_users; 0: none), in a background "
        "thread that takes at most half of a core, so that their first request is a lookup too."))
    serve_ann_min_items: int = Field(100_000, ge=0, description=(
        "Catalogue size from which a replica of a vector family (two-tower, SASRec, Mult-VAE) scores every item "
        "through a 4-bit product-quantised scan and re-scores its best candidates (and the 2,048 longest item "
        "vectors) exactly, instead of scoring every item exactly; 0: always exact. Below 100,000 items exact "
        "scoring of one user costs under 1.5 ms on 2 cores; at 1M it costs 18 ms against the scan's 3-4 ms, "
        "which found 0.99 or more of the exact top 10 (README, benchmarks/serving_ann.py)."))
    serve_batch_max: int = Field(1, ge=1, le=4096, description=(
        "Most requests whose model pass a replica runs as one batch; above 1, a family's replica also answers up "
        "to that many requests in threads at once (1, the default: no batching; on 2 cores it gained with SASRec "
        "on ml1m in some runs and not others, and nothing on the demo data, see the README). A batch is what "
        "queued while the previous one ran, plus what arrives within serve_batch_wait_ms."))
    serve_batch_wait_ms: float = Field(0.0, ge=0, le=1000, description=(
        "How long the first request of a batch waits for others (0: never waits)."))
    serve_log_level: LogLevel = Field("WARNING", description=(
        "Level of Ray Serve's own logger in the replicas (their files under the serving cluster's session logs, "
        "moved to home/logs/serve when the cluster stops; a replica's stdout and stderr go to its worker's .out "
        "and .err files there, whatever the level). "
        "At INFO Serve also builds a log record for every request, which it then drops when its access log is "
        "off, as it is here: about 7% of a replica's CPU per cached /recommend (README, \"Serving\")."))
    # Traffic (aimass.serving.traffic): replicas read their endpoint's split from the catalog.
    serve_drain_s: float = Field(3.0, ge=0, le=300, description=(
        "How long a stopping replica (a delete, a rolling update, a scale-down) keeps answering before it "
        "closes; in-flight requests always finish. Ray's default, 30 s, is for external load balancers."))
    traffic_poll_s: float = Field(0.25, gt=0, le=10, description="How often a replica reads its split.")
    traffic_apply_timeout_s: float = Field(300.0, gt=0, description=(
        "How long a split change waits for every replica to load its arms before it is refused."))
    # Monitoring and retraining triggers, run on a schedule inside the serving cluster (aimass.monitoring).
    monitor_interval_s: float | None = Field(3600.0, gt=0, description="Drift report schedule; None: off.")
    monitor_window_s: float = Field(3600.0, gt=0, description="The window a scheduled drift report reads.")
    monitor_keep_reports: int = Field(200, ge=1, description=(
        "Drift reports kept per endpoint (about 4 MB each); storing one removes the oldest beyond it."))
    retrain_interval_s: float | None = Field(None, gt=0, description="Retrain on a schedule; None: off.")
    retrain_min_events: int | None = Field(None, ge=1, description="Retrain after this many new positive events.")
    retrain_on_drift: bool = Field(False, description="Retrain when a scheduled drift report flags.")
    retrain_retry_s: float = Field(1800.0, gt=0, description=(
        "After a failed retrain attempt, how long the triggers wait before the next one."))
    # Rollouts (aimass.experiments): a retrained challenger that passes the gate goes out as a canary on the
    # running endpoint and is promoted or rolled back by the online experiment; 0 promotes by alias only.
    gate_tolerance: float = Field(0.01, ge=0, lt=1, description=(
        "How much worse (relative) a retrained challenger's offline metric may be than the champion's."))
    canary_percent: int = Field(10, ge=0, le=50, description="Share of users a retrained challenger gets first.")
    experiment_metric: str = Field("positive_rate", pattern=r"^(positive|[a-z][a-z0-9_]{0,31})_rate$", description=(
        "The rate a canary must win on: positive_rate or <event type>_rate."))
    experiment_alpha: float = Field(0.05, gt=0, lt=1, description="Significance of the canary's sequential test.")
    experiment_mde: float = Field(0.02, gt=0, lt=1, description="Smallest rate difference worth detecting.")
    guardrail_max_p99_ratio: float = Field(1.5, gt=1, description="A canary slower than this x the control "
                                                                  "(p99) is rolled back.")
    guardrail_max_error_rate: float = Field(0.01, ge=0, lt=1, description="A canary failing more often is "
                                                                          "rolled back.")

    @model_validator(mode="before")
    @classmethod
    def _read_secrets_file(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("secrets_file"):
            return data
        path = Path(data["secrets_file"]).expanduser()
        try:
            loose = path.stat().st_mode & 0o077
            stored = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"secrets_file {path} cannot be read as JSON: {type(e).__name__}") from None
        if loose:  # what it holds is what the URLs would have said in the open
            raise ValueError(f"secrets_file {path} is readable by others (mode {path.stat().st_mode & 0o777:o}): "
                             f"chmod 600 it")
        if not isinstance(stored, dict) or set(stored) - set(CREDENTIAL_FIELDS):
            raise ValueError(f"secrets_file {path} must be a JSON object whose keys are among "
                             f"{', '.join(CREDENTIAL_FIELDS)}")
        return {**data, **{k: v for k, v in stored.items() if data.get(k) is None}}

    def dump(self, fields: Iterable[str] | None = None, *, secrets_to: Path | None = None) -> dict[str, Any]:
        """These settings (all, or `fields`) as JSON values that `Settings(**...)` turns back into them, unset
        ones as None. With `secrets_to` (a folder), the URLs that carry a credential are None here: their values
        go to a JSON file there, readable by this user only, that `secrets_file` names. Its name changes with its
        content, so a changed credential changes the dump, and a file a running process names stays."""
        import secrets

        # unset ones as None too: a running actor given these must not keep a value its environment still has
        values = {k: v for k, v in self.model_dump(mode="json").items()
                  if k != "secrets_file" and (fields is None or k in fields)}
        hidden = {k: v for k, v in values.items()
                  if secrets_to is not None and k in CREDENTIAL_FIELDS and v is not None and shown_url(v) != v}
        if not hidden:
            return {**values, "secrets_file": None}
        text = json.dumps(hidden, sort_keys=True)
        folder = private_dir(secrets_to)
        # a file with this content already: its name again (no restart for a redeploy that changed nothing)
        same = [f for f in sorted(folder.glob("secrets-*.json")) if f.read_text() == text]
        path = same[0] if same else folder / f"secrets-{secrets.token_hex(8)}.json"
        if not same:
            write_private(path, text)
        # a hidden one as None: the file's value wins over None, and over whatever the environment holds
        return {**values, **dict.fromkeys(hidden), "secrets_file": str(path)}

    def as_env(self, fields: Iterable[str] | None = None, *, secrets_to: Path | None = None) -> dict[str, str]:
        """`dump` as the AIMASS_* variables that give a child process exactly these settings. With `secrets_to`
        no credential is among them (Ray writes a runtime environment's variables whole into its logs)."""
        return {f"AIMASS_{k.upper()}": v if isinstance(v, str) else json.dumps(v)
                for k, v in self.dump(fields, secrets_to=secrets_to).items() if v is not None}

    @field_validator("catalog_url")
    @classmethod
    def _sqlalchemy_url(cls, v: str | None) -> str | None:
        # parsed, not connected: a typo is bad input at start-up, not an unexpected error in the first query
        if v is not None:
            from sqlalchemy.engine import make_url

            try:
                make_url(v)
            except Exception:
                raise ValueError("not a SQLAlchemy URL (dialect[+driver]://user:password@host/database, or "
                                 "sqlite:///path)") from None
        return _absolute_sqlite(v)

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _absolute_store(cls, v: str | None) -> str | None:
        if v is None or v.startswith("sqlite:"):
            return _absolute_sqlite(v)
        return v if "://" in v or v.startswith(("file:", "databricks")) else str(Path(v).expanduser().resolve())

    @field_validator("data_registry", "dvc_remote")
    @classmethod
    def _absolute_folder(cls, v: str | None) -> str | None:
        # like home, resolved once: the processes this one starts (a retrain in the serving cluster, replicas)
        # run in other folders, where a relative path named another registry, remote or store
        return v if v is None or _is_url(v) else str(Path(v).expanduser().resolve())

    @field_validator("home", mode="before")
    @classmethod
    def _named_home(cls, v: Any) -> Any:
        # "" would be the current folder (AIMASS_HOME= left empty wrote a catalog wherever the command ran)
        if isinstance(v, str | Path) and not str(v).strip():
            raise ValueError("must name a folder, not be empty")
        return v

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, v: Path) -> Path:
        # Resolved once, so a later chdir cannot move the state.
        return v.expanduser().resolve()

    @property
    def catalog(self) -> str:
        return self.catalog_url or f"sqlite:///{self.home / 'catalog.db'}"

    @property
    def registry_path(self) -> Path:
        """Working copy of the data registry: the registry itself when it is local, else a clone."""
        if self.data_registry and not _is_url(self.data_registry):
            return Path(self.data_registry).expanduser().resolve()
        return self.home / "data-registry"

    @property
    def registry_origin(self) -> str | None:
        """The git URL to clone the registry from, when it lives elsewhere."""
        return self.data_registry if self.data_registry and _is_url(self.data_registry) else None

    @property
    def remote(self) -> str:
        return self.dvc_remote or str(self.home / "dvc-remote")

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def locks(self) -> Path:
        return self.home / "locks"

    @property
    def logs_dir(self) -> Path:
        """aimass.log; Ray's session logs of this home's training jobs (ray/) and stopped serving clusters (serve/)."""
        return self.home / "logs"

    @property
    def secrets_dir(self) -> Path:
        """Where the processes this home starts (serving replicas, the cluster's actors, training workers) read
        the credentials in store URLs from (`dump(secrets_to=)`): not from their runtime environment or
        config, which Ray logs and shows whole."""
        return self.home / "serve" / "secrets"


def _is_url(s: str) -> bool:
    return "://" in s or s.startswith("git@")


def _absolute_sqlite(url: str | None) -> str | None:
    """A SQLite URL whose file is named relative to the current folder, made absolute (see _absolute_folder)."""
    from sqlalchemy.engine import make_url

    if url is None:
        return None
    try:
        u = make_url(url)
    except Exception:  # a ValueError, so that it is the setting's error (a typo like sqlite:/x.db)
        raise ValueError("not a SQLAlchemy URL (dialect[+driver]://user:password@host/database, or "
                         "sqlite:///path)") from None
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:" or Path(u.database).is_absolute():
        return url
    return u.set(database=str(Path(u.database).expanduser().resolve())).render_as_string(hide_password=False)


def private_dir(path: Path) -> Path:
    """`path` created if missing, as this user's alone (0700). The short fixed-name folders aimass keeps in the
    shared temp folder (Ray's sockets and session files, HAProxy's config and admin socket) must not be one
    another user made first, or could read or swap."""
    import os
    import stat

    if not path.exists():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        from aimass.errors import BackendError

        raise BackendError(f"{path} is not a folder of this user's (owner uid {st.st_uid}): aimass will not "
                           "keep its cluster's sockets there; remove it or point TMPDIR elsewhere")
    if st.st_mode & 0o077:
        path.chmod(0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by this user only, from its first byte (files that carry
    credentials or hold what replicas are told). Whole or not at all: written beside it, synced, then renamed
    over it, so a full disk or a kill mid-write leaves the old file, never an empty one."""
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def redacted(text: str) -> str:
    """`text` with each URL in it as `shown_url` shows it: for messages that may quote a store URL (a failed
    call to an MLflow server names the URL it called)."""
    # the user-info part first, quotes and brackets included: a URL's password may hold an unencoded ' (RFC 3986),
    # which would end the URL below before its "@"
    text = _USERINFO.sub(lambda m: f"{m[1]}{m[2].split(':', 1)[0] + ':' if ':' in m[2] else ''}***@", text)
    return re.sub(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+", lambda m: shown_url(m.group()), text)


_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^/\s@]*)@")


def masked_keys(text: str) -> str:
    """`text` with each full API key in it shown as its public id (aimass_ID_<secret>): for command lines,
    records and logs a person may have pasted one into."""
    return _ANY_KEY.sub(r"\1_<secret>", text)


_ANY_KEY = re.compile(r"\b(aimass_[0-9a-f]{12})_[A-Za-z0-9_-]+")


def error_line(e: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none), `redacted`: what a record or a
    reply keeps of an error that a library raised."""
    return redacted((str(e).strip().splitlines() or [type(e).__name__])[0])


# A query parameter whose name says it holds a secret (libpq's `?password=`, a signed URL's `sig`, `?token=`)
# (the value masked up to the next "&" only: a database driver takes a ";" or "#" in it as part of the value)
_SECRET_PARAM = re.compile(r"(?i)([?&;][^=&;#]*(?:pass|pwd|secret|token|key|sig|cred|auth)[^=&;#]*=)[^&\s]*")


def shown_url(url: str) -> str:
    """`url` as it may be printed, logged or put in an error: a password or token in it (`scheme://user:secret@
    host/...`, `https://token@host/...`, `...?password=secret`) replaced by ***; anything without one unchanged."""
    if "://" not in url:
        return url
    return _SECRET_PARAM.sub(r"\1***", _shown_userinfo(url))


def _shown_userinfo(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<a URL that cannot be parsed>"
    if "@" not in parts.netloc:
        rest = url.split("://", 1)[1]
        if "@" not in rest:
            return url
        # a secret holding an unencoded "/" or "#" ends the host early: mask up to the first "@" all the same
        # (a path that merely holds an "@" is shown masked too, which hides nothing that matters)
        userinfo, after = rest.split("@", 1)
        user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
        return f"{url.split('://', 1)[0]}://{user + ':' if user else ''}***@{after}"
    userinfo, host = parts.netloc.rsplit("@", 1)
    user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
    return urlunsplit(parts._replace(netloc=f"{user + ':' if user else ''}***@{host}"))


# AIMASS_* variables that are not settings: a serving process's code digest, the benchmarks' data folder
_NOT_SETTINGS = {"AIMASS_CODE_DIGEST", "AIMASS_BENCH_DATA"}


def unknown_variables() -> str | None:
    """What is wrong with this process's AIMASS_* variables that pydantic-settings ignores: one that names no
    setting (AIMASS_CATLOG_URL would quietly leave the catalog in SQLite), with the closest name; None if none."""
    import difflib
    import os

    known = {f"AIMASS_{name.upper()}" for name in Settings.model_fields} | _NOT_SETTINGS
    unknown = sorted(k for k in os.environ if k.upper().startswith("AIMASS_") and k.upper() not in known)
    if not unknown:
        return None
    hints = [f"{k} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(k.upper(), known, 1)) else k
             for k in unknown]
    return f"unknown setting variable(s): {', '.join(hints)}"


@functools.cache
def default_settings() -> Settings:
    """The settings of a process that was given none: read from the environment once."""
    return Settings()
