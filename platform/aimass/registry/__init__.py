"""The model registry: trained runs become registered, comparable, promotable MLflow model versions with
lineage tags; aliases (`champion`, `challenger`) instead of the deprecated stages; one loader for any
`NAME@alias` or `NAME/version`.

The SDK face is `aimass.models` (register, list, show, versions, promote, load)."""
from __future__ import annotations

import json
import math
import re
import time
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

from filelock import FileLock
from pydantic import BaseModel, Field

from aimass.errors import BackendError, ConflictError, InvalidInputError, NotFoundError
from aimass.settings import Settings, default_settings, error_line, shown_url
from aimass.tracking import TAG as T  # tag prefix
from aimass.tracking import lineage_of

ALIASES = ("champion", "challenger")
METHODS = ("int8", "fp16", "bf16", "prune", "distill", "onnx")  # compression, see registry/README.md
# Fewer unexposed test users than this and the gate decides on the whole split: the figure on them is noise
# (about 0.04 standard error for an NDCG@10 near 0.1 on 50 users), worse than the whole split's known bias.
MIN_UNEXPOSED_USERS = 50
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_REF = re.compile(r"^(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_-]+))?$")


class ModelVersionInfo(BaseModel):
    name: str
    version: int
    aliases: list[str] = Field(default_factory=list)
    family: str | None = None
    run_id: str | None = None
    dataset: str | None = None
    dataset_hash: str | None = None
    parent_version: int | None = None
    method: str = "original"
    metrics: dict[str, float] = Field(default_factory=dict)
    source: str
    created_at: datetime
    tags: dict[str, str] = Field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"


def _client(s: Settings):
    from aimass.tracking import client

    return client(s)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInputError(f"invalid model name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return name


def parse_ref(ref: str) -> tuple[str, int | None, str | None]:
    m = _REF.fullmatch(ref or "")
    if not m:
        raise InvalidInputError(f"invalid model reference {ref!r}: use NAME, NAME/VERSION or NAME@ALIAS")
    return check_name(m["name"]), int(m["version"]) if m["version"] else None, m["alias"]


def _info(mv) -> ModelVersionInfo:
    tags = dict(mv.tags or {})
    metrics = {k.removeprefix(f"{T}metric."): float(v) for k, v in tags.items() if k.startswith(f"{T}metric.")}
    return ModelVersionInfo(
        name=mv.name, version=int(mv.version), aliases=sorted(mv.aliases or []), family=tags.get(f"{T}family"),
        run_id=mv.run_id, dataset=tags.get(f"{T}dataset_ref"), dataset_hash=tags.get(f"{T}dataset_hash"),
        parent_version=int(tags[f"{T}parent_version"]) if f"{T}parent_version" in tags else None,
        method=tags.get(f"{T}method", "original"), metrics=metrics, source=mv.source,
        created_at=datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=UTC),
        tags={k: v for k, v in tags.items() if not k.startswith(f"{T}metric.")})


def register(run_id: str, name: str, *, settings: Settings | None = None, parent_version: int | None = None,
             method: str | None = None, model_uri: str | None = None) -> ModelVersionInfo:
    """Register the model a training run logged (or `model_uri`) as the next version of `name`. `method` and
    `parent_version` default to what the run says: a compression run registered by hand stays a child."""
    s = settings or default_settings()
    check_name(name)
    client = _client(s)
    try:
        run = client.get_run(run_id)
    except Exception:
        raise NotFoundError(f"no training run {run_id!r}") from None
    if method is None:
        method = run.data.tags.get(f"{T}method", "original")
        parent_name, _, parent = run.data.tags.get(f"{T}parent_model", "").rpartition("/")
        if parent_version is None and method != "original" and parent_name == name and parent.isdigit():
            parent_version = int(parent)  # a version of another name is not one of this name's
    if method != "original" and method not in METHODS:
        raise InvalidInputError(f"unknown method {method!r}: 'original' or one of {', '.join(METHODS)}")
    if parent_version is not None and (method == "original" or parent_version < 1):
        raise InvalidInputError(f"parent_version {parent_version} needs a compression method and a version >= 1")
    own = model_uri is None  # the run's own logged model, as found below
    if model_uri is None:
        import mlflow

        from aimass.tracking import logged_models

        models = logged_models(mlflow, run_id)
        if not models:
            raise InvalidInputError(f"run {run_id} has no logged model to register")
        model_uri = models[0]
    else:
        _check_model_uri(model_uri)
    tags = lineage_of(run.data.tags)
    tags.update({f"{T}run_id": run_id, f"{T}method": method})
    if parent_version is not None:
        tags[f"{T}parent_version"] = str(parent_version)
    # The run's figures are its own model's: on another model (a model_uri another run logged, or a folder)
    # they would be claimed for it and the gate would pass it on them; without them, the gate scores it itself.
    if own or _logged_by(model_uri) == run_id:
        tags.update({f"{T}metric.{k}": str(v) for k, v in run.data.metrics.items()
                     if k.startswith(("test_", "best_val_", "size_", "latency_", "n_parameters", "parent_",
                                       "delta_", "speedup_", "top10_"))})
    with _lock(s, name, UNATTENDED_WAIT_S):
        created = False
        try:
            client.get_registered_model(name)
        except Exception:
            client.create_registered_model(name, tags={f"{T}managed": "true"})
            created = True
        try:
            mv = client.create_model_version(name, source=model_uri, run_id=run_id, tags=tags,
                                             model_id=model_uri.removeprefix("models:/"))
        except Exception as e:
            if created:  # a name without versions would be listed, and could be promoted or served as nothing
                with suppress(Exception):
                    client.delete_registered_model(name)
            raise BackendError(f"cannot register {shown_url(model_uri)} as a version of model {name!r}: "
                               f"{error_line(e)}; check the tracking store and try again") from None
    return _info(client.get_model_version(name, mv.version))


def _check_model_uri(model_uri: str) -> None:
    """MLflow creates a version of any source, a folder that is not there included, and fails only at load; a
    models:/ URI it cannot find fails after the name was created. Both are refused before anything exists."""
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    try:
        Model.load(model_uri)  # reads the MLmodel file alone, not the weights
    except Exception as e:
        # a store that is away is no bad URI: only what names nothing is the caller's to fix
        if isinstance(e, MlflowException) and e.error_code not in ("RESOURCE_DOES_NOT_EXIST",
                                                                   "INVALID_PARAMETER_VALUE"):
            raise BackendError(f"cannot read model_uri {shown_url(str(model_uri))!r}: {error_line(e)}") from None
        raise InvalidInputError(f"model_uri {shown_url(str(model_uri))!r} names no MLflow model ({error_line(e)}): "
                                "give the models:/m-... URI of a model a run logged, or a folder holding an MLmodel "
                                "file") from None


def _logged_by(model_uri: str) -> str | None:
    """The run that logged the model `model_uri` names (models:/m-...), or None (a folder, an unknown id)."""
    import mlflow

    if not str(model_uri).startswith("models:/m-"):
        return None
    try:
        return mlflow.get_logged_model(str(model_uri).removeprefix("models:/")).source_run_id
    except Exception:
        return None


def list_models(*, settings: Settings | None = None) -> list[dict]:
    client = _client(settings or default_settings())
    # every page, and no filter naming a model: another team's name may hold a quote, which no filter string
    # takes (MLflow refused the whole listing)
    found: dict[str, list[int]] = {}
    for v in _pages(client.search_model_versions, 10_000):
        found.setdefault(v.name, []).append(int(v.version))
    out = [{"name": rm.name, "versions": len(found.get(rm.name, [])),
            "latest": max(found.get(rm.name, []), default=None),
            "aliases": {a: int(v) for a, v in (rm.aliases or {}).items()}}
           for rm in _pages(client.search_registered_models, 1000)]
    return sorted(out, key=lambda d: d["name"])


def _pages(search, size: int):
    token = None
    while True:
        page = search(max_results=size, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def versions(name: str, *, settings: Settings | None = None) -> list[ModelVersionInfo]:
    client = _client(settings or default_settings())
    check_name(name)
    vs = client.search_model_versions(f"name = '{name}'")
    if not vs:
        raise NotFoundError(f"no registered model named {name!r}")
    # search results carry no aliases; the registered model holds them
    by_version: dict[int, list[str]] = {}
    for a, v in (client.get_registered_model(name).aliases or {}).items():
        by_version.setdefault(int(v), []).append(a)
    infos = [_info(v) for v in vs]
    for i in infos:
        i.aliases = sorted(by_version.get(i.version, []))
    return sorted(infos, key=lambda i: i.version)


def get(ref: str, *, settings: Settings | None = None) -> ModelVersionInfo:
    """`NAME` (latest version), `NAME/VERSION` or `NAME@ALIAS`."""
    s = settings or default_settings()
    name, version, alias = parse_ref(ref)
    client = _client(s)
    if version is not None or alias:  # one row, not every version of the model (100 versions: 0.2 s)
        try:
            found = (client.get_model_version(name, str(version)) if version is not None
                     else client.get_model_version_by_alias(name, alias))
            return _info(found)
        except Exception:  # missing (or the store is away): the full listing below says which, or raises
            pass
    all_versions = versions(name, settings=s)
    if alias:
        try:
            return _info(client.get_model_version_by_alias(name, alias))
        except Exception:
            raise NotFoundError(f"model {name!r} has no alias {alias!r}") from None
    if version is None:
        return all_versions[-1]
    for v in all_versions:
        if v.version == version:
            return v
    raise NotFoundError(f"model {name!r} has no version {version} (latest is {all_versions[-1].version})")


# how long an unattended promotion (a retrain's gate, a canary's winner) waits for another one of the model
UNATTENDED_WAIT_S = 1800.0


def _lock(s: Settings, name: str, wait_s: float):
    """One promotion or registration of a model at a time; another waits up to `wait_s` (a register waits out
    a promotion's gate, minutes when it re-scores, so that a compression's work is not lost)."""
    from aimass import console

    return console.held(s.locks / f"model-{name}.lock", f"another promotion or registration of model {name!r}",
                        wait_s, f"a promotion or registration of model {name!r} is in progress; try again when "
                        "it ends")


class GateCheck(BaseModel):
    check: str
    passed: bool
    detail: str
    values: dict[str, float] = Field(default_factory=dict, description="The numbers behind the detail")


class GateRefusedError(ConflictError):
    """A promotion the gate refused; `checks` are all of its checks, passed ones included."""

    def __init__(self, message: str, checks: list[GateCheck]):
        super().__init__(message)
        self.checks = checks


class Promotion(BaseModel):
    name: str
    version: int
    alias: str
    promoted: bool
    forced: bool
    previous: int | None
    checks: list[GateCheck]


def promote(name: str, version: int, *, alias: str = "champion", force: bool = False,
            tolerance: float = 0.01, latency_budget_ms: float = 50.0, metric: str = "test_ndcg_at_10",
            rescore_on: str | None = None, min_unexposed_users: int = MIN_UNEXPOSED_USERS,
            baseline: int | None = None, wait_s: float = 0.0, settings: Settings | None = None) -> Promotion:
    """Point `alias` at `version` if it passes the gate: offline `metric` no worse than the champion's by more
    than `tolerance` (relative) on one test split, and p99 scoring latency at batch 1 within
    `latency_budget_ms`. The split is the champion's dataset version's; for a candidate trained on a version
    derived from it (feedback events folded in), the candidate's, with the champion re-scored there
    (`rescore_on` names another version derived from both). There the quality check decides on the users
    whose test target the endpoint had not shown them (feedback on what was served favours the served model)
    when they are at least `min_unexposed_users`, else on the whole split; its detail gives both. Any other
    dataset refuses. `baseline`: the version to compare with while the name has no champion (retraining
    passes the version its endpoint serves); without either, only latency is checked (a first champion).
    `force` promotes anyway and records so. A refusal raises GateRefusedError (a ConflictError) carrying the
    checks. While another promotion or registration of the model runs, a ConflictError at once, or after
    `wait_s` seconds of waiting for it (what an unattended caller, a retrain or a canary's end, does)."""
    s = settings or default_settings()
    if alias not in ALIASES:
        raise InvalidInputError(f"unknown alias {alias!r}; use one of {', '.join(ALIASES)}")
    candidate, client = _candidate(name, version, tolerance, min_unexposed_users, s, latency_budget_ms, metric)
    with _lock(s, name, wait_s):
        checks = _run_gate(client, candidate, tolerance, latency_budget_ms, metric, rescore_on, min_unexposed_users,
                           s, baseline)
        ok = all(c.passed for c in checks)
        # every decision is kept on the candidate, a refusal too: what the console's models page lists
        verdict = "passed" if ok else "forced" if force else "refused"
        client.set_model_version_tag(name, str(version), f"{T}gate", (
            f"{datetime.now(UTC).isoformat(timespec='seconds')} {verdict} for {alias}: "
            + "; ".join(f"{'pass' if c.passed else 'FAIL'} {c.check}" for c in checks))[:4000])
        if not ok and not force:
            failed = "; ".join(f"{c.check}: {c.detail}" for c in checks if not c.passed)
            raise GateRefusedError(f"promotion of {name}/{version} to {alias} refused: {failed} (--force overrides)",
                                   checks)
        if force and not ok:  # recorded before the alias moves: a forced promotion is never unrecorded
            client.set_model_version_tag(name, str(version), f"{T}forced_promotion",
                                         "; ".join(f"{c.check}: {c.detail}" for c in checks if not c.passed))
        previous = _set_alias(client, name, version, alias)
    return Promotion(name=name, version=version, alias=alias, promoted=True, forced=force and not ok,
                     previous=previous, checks=checks)


def gate(name: str, version: int, *, tolerance: float = 0.01, latency_budget_ms: float = 50.0,
         metric: str = "test_ndcg_at_10", rescore_on: str | None = None,
         min_unexposed_users: int = MIN_UNEXPOSED_USERS, baseline: int | None = None,
         settings: Settings | None = None) -> list[GateCheck]:
    """The checks `promote` would run against the current champion (or `baseline`), changing nothing."""
    s = settings or default_settings()
    candidate, client = _candidate(name, version, tolerance, min_unexposed_users, s, latency_budget_ms, metric)
    return _run_gate(client, candidate, tolerance, latency_budget_ms, metric, rescore_on, min_unexposed_users, s,
                     baseline)


def set_alias(name: str, version: int, alias: str, *, settings: Settings | None = None) -> int | None:
    """Point a non-champion alias (`challenger`) at `version` without the gate: the challenger is the model
    under evaluation. The champion moves only through `promote`. Returns the version it pointed at before."""
    s = settings or default_settings()
    if alias not in ALIASES:
        raise InvalidInputError(f"unknown alias {alias!r}; use one of {', '.join(ALIASES)}")
    if alias == "champion":
        raise InvalidInputError("the champion alias moves only through promote (the gate)")
    get(f"{name}/{version}", settings=s)
    with _lock(s, name, 60):
        return _set_alias(_client(s), name, version, alias)


def _candidate(name: str, version: int, tolerance: float, min_unexposed_users: int, s: Settings,
               latency_budget_ms: float, metric: str):
    from aimass.registry._gate import scorable

    if not scorable(metric):  # before the gate, which would record the version as refused for it
        raise InvalidInputError(f"unknown gate metric {metric!r}: use test_ndcg_at_K, test_recall_at_K, "
                                "test_coverage_at_K or test_mrr (K >= 1)")
    if not 0 <= tolerance < 1:
        raise InvalidInputError(f"tolerance must be in [0, 1), got {tolerance}")
    # before the gate: a budget no model meets would be recorded on the version as a refusal
    if not (math.isfinite(latency_budget_ms) and latency_budget_ms > 0):
        raise InvalidInputError(f"latency budget must be a positive number of milliseconds, got {latency_budget_ms}")
    if isinstance(min_unexposed_users, bool) or not isinstance(min_unexposed_users, int) or min_unexposed_users < 1:
        raise InvalidInputError(f"min_unexposed_users must be a whole number of users >= 1, got "
                                f"{min_unexposed_users!r}")
    return get(f"{name}/{version}", settings=s), _client(s)


def _run_gate(client, candidate, tolerance, latency_budget_ms, metric, rescore_on, min_unexposed_users,
              s, baseline: int | None = None) -> list[GateCheck]:
    from aimass.registry._gate import run_gate

    champion = _champion(client, candidate.name)
    if champion is None and baseline is not None:  # compared as a champion would be: quality, not latency alone
        champion = get(f"{candidate.name}/{baseline}", settings=s)
    return run_gate(candidate, champion, tolerance, latency_budget_ms, metric,
                    settings=s, rescore_on=rescore_on, min_unexposed_users=min_unexposed_users)


def _set_alias(client, name: str, version: int, alias: str) -> int | None:
    holder = _aliases(client, name).get(alias)
    # the tag first: a failure leaves the alias where it was (a stray tag says when it was last tried)
    client.set_model_version_tag(name, str(version), f"{T}promoted_{alias}_at", datetime.now(UTC).isoformat())
    client.set_registered_model_alias(name, alias, str(version))
    return int(holder) if holder is not None else None


def _aliases(client, name: str) -> dict[str, str]:
    """The model's aliases. Only an alias that is not there means "none yet": a store that cannot be read is
    an error, never an empty answer."""
    try:
        return dict(client.get_registered_model(name).aliases or {})
    except Exception as e:
        raise BackendError(f"cannot read the aliases of model {name!r}: {error_line(e)}") from None


def _champion(client, name: str) -> ModelVersionInfo | None:
    """The current champion, or None when the alias does not exist; any other failure to read it refuses
    (a gate that took an unreadable champion for no champion would skip its dataset and quality checks)."""
    try:
        return _info(client.get_model_version_by_alias(name, "champion"))
    except Exception as e:
        cause = e
    if "champion" not in _aliases(client, name):
        return None
    raise BackendError(f"promotion of {name!r} refused: its champion cannot be read: {error_line(cause)}")


def compress(name: str, version: int, method: str, *, settings: Settings | None = None, progress: bool = False,
             **options) -> ModelVersionInfo:
    """A smaller version of ``name/version`` made by ``method`` (one of METHODS), registered as the next version
    with ``version`` as its parent; its size, latency and quality deltas are in ``.metrics``. Options: see
    registry/README.md."""
    from aimass.registry._compress import compress as run  # torch and the codecs load only when compressing

    return run(name, version, method, settings=settings, progress=progress, **options)


def check_compression(family: str | None, method: str, *, parent: ModelVersionInfo | None = None,
                      **options) -> None:
    """Refuses (InvalidInputError) what `compress` would refuse for a version of `family` (`parent` itself
    where it exists already), before anything exists: a command that ends by compressing checks it before its
    first step."""
    from aimass.registry._compress import check, check_parent

    check(method, family, options)
    if parent is not None:
        check_parent(parent)


def load_logged(model_uri: str, *, settings: Settings | None = None):
    """A ready scorer for a model a run logged (the `models:/m-...` URI `aimass train` returns), registered or
    not: built from the model's own files as `load` builds one (MLflow's loader would run the Python file stored
    with the model, which anyone who can log to the tracking server can choose). A model a remote store holds
    is copied once to home/cache/logged/ (a logged model's files never change) and read from there after."""
    import hashlib

    import mlflow

    s = settings or default_settings()
    if m := _REGISTERED.fullmatch(model_uri or ""):  # a registered version after all: read as `load` reads it
        return load(f"{m[1]}/{m[2]}" if m[2] else f"{m[1]}@{m[3]}", settings=s)
    client = _client(s)  # MLflow pointed at this home's store
    try:
        where = _immutable_location(client, model_uri)
        if where is None or _is_local(where):  # a local folder, or a URI whose files may change (an alias)
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
        else:
            key = hashlib.sha256(model_uri.encode()).hexdigest()[:24]
            local = _downloaded(s, model_uri, s.home / "cache" / "logged" / key,
                                {"store": shown_url(s.tracking_uri), "uri": model_uri})
    except Exception as e:
        raise NotFoundError(f"cannot read the model {shown_url(model_uri)!r}: {error_line(e)}") from None
    return _scorer(local, shown_url(model_uri))


_LOGGED = re.compile(r"models:/(m-[0-9a-f]{32})(?:/.*)?")
_REGISTERED = re.compile(r"models:/([A-Za-z0-9][A-Za-z0-9_.-]{0,63})(?:/(\d+)|@([A-Za-z0-9_-]+))")
_RUN = re.compile(r"runs:/([0-9a-f]{32})/.+")


def _immutable_location(client, model_uri: str) -> str | None:
    """Where the files of a URI that always names the same files lie: a logged model's (models:/m-<id>) or a
    run's artifacts (runs:/<run id>/...). None for any other URI (models:/NAME/latest may name other files
    tomorrow): no copy of it is kept."""
    if m := _LOGGED.fullmatch(model_uri):
        return client.get_logged_model(m[1]).artifact_location
    if m := _RUN.fullmatch(model_uri):
        return client.get_run(m[1]).info.artifact_uri
    return None


def _is_local(uri: str) -> bool:
    """A folder of this machine (a Windows drive letter parses as a scheme), read where it lies: no copy."""
    scheme = urlparse(uri).scheme
    return scheme in ("", "file") or len(scheme) == 1


def load(ref: str, *, settings: Settings | None = None):
    """A ready scorer for `NAME@alias` or `NAME/version`, whatever produced it: `.recommend(df)`,
    `.estimator.score(histories)`, `.item_ids`, and `.info` (the version's lineage)."""
    import mlflow

    s = settings or default_settings()
    info = get(ref, settings=s)
    client = _client(s)
    t0 = time.time()
    uri = f"models:/{info.name}/{info.version}"
    if _is_local(client.get_model_version_download_uri(info.name, str(info.version))):
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    else:
        local = _downloaded(s, uri, s.home / "cache" / "models" / info.name / str(info.version),
                            version_identity(s, info))
    model = _scorer(local, info.ref)
    model.info = info
    model.load_seconds = time.time() - t0
    return model


def _downloaded(s: Settings, uri: str, dest: Path, identity: dict) -> Path:
    """A model held by a remote store (a tracking server, an object store), copied once to `dest` on this
    machine (home/cache/models/NAME/VERSION for a version) and read from there after: MLflow copies into a new
    temporary folder at each call, never removed, so each replica start, promotion and compression left a whole
    model behind. A version's files never change, but NAME/VERSION names another version once the home points
    at another store (or a wiped one: MLflow numbers from 1 again), so the copy holds a marker of whose model it
    is (`identity`) and is copied again when that differs. The copy is renamed into place whole, under a lock."""
    import shutil
    import tempfile

    import mlflow

    if _holds(dest, identity):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        if _holds(dest, identity):  # another process copied it meanwhile
            return dest
        for stale in dest.parent.glob(f".download-{dest.name}-*"):  # a copy killed mid-way (under this lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp, aside = (Path(tempfile.mkdtemp(prefix=f".download-{dest.name}-", dir=dest.parent)) for _ in "ab")
        try:
            got = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp)))
            (got / _MARKER).write_text(json.dumps(identity))  # inside: the copy and its marker move as one
            if dest.exists():  # another store's version: moved aside (a rename) so the new one lands whole
                dest.rename(aside / "replaced")
            got.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(aside, ignore_errors=True)
    return dest


_MARKER = ".aimass-source.json"


def version_identity(s: Settings, info: ModelVersionInfo) -> dict:
    """Whose version `info` is: the tracking store (its address, secrets masked), the run and the source. What a
    copy or a cache of a version records: NAME/VERSION alone names another version in another store."""
    return {"store": shown_url(s.tracking_uri), "run_id": info.run_id, "source": info.source}


def _holds(dest: Path, identity: dict) -> bool:
    """Whether the cached copy is this version's; a copy without a marker (made before markers) is not known
    to be, so it is copied again once."""
    try:
        return dest.is_dir() and json.loads((dest / _MARKER).read_text()) == identity
    except (OSError, ValueError):
        return False


def _scorer(local: Path, ref: str):
    """The scorer of a downloaded model, built by this installed aimass from the model's own files (weights,
    ids, config: no pickle). MLflow's loader would run the Python file stored with the model, and anyone who
    can log a model to the tracking server can store any file there: refused unless aimass logged it."""
    import yaml

    from aimass.registry._pyfunc import CompressedRecommender
    from aimass.tracking.pyfunc import AimassRecommender

    try:
        flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
        if Path(flavor["model_code_path"]).name not in ("pyfunc.py", "_pyfunc.py"):
            raise KeyError(flavor["model_code_path"])
        root = local.resolve()
        # a path the MLmodel names is the model's own file: "../x" or "/etc/x" would have the loaders parse
        # any file of this machine that whoever logged the model chose
        arts = {k: (local / v["path"]).resolve() for k, v in flavor["artifacts"].items()}
        outside = [str(flavor["artifacts"][k]["path"]) for k, p in arts.items() if not p.is_relative_to(root)]
        if outside:
            raise InvalidInputError(f"{ref}: its MLmodel names files outside the model's folder ({outside[0]}): "
                                    "refusing to load it")
        family = json.loads(arts["family"].read_text())["family"]
        # which scorer by what the folder holds, not by the code file's name: plain versions logged before the
        # MLflow plumbing moved to aimass.tracking name aimass/training/_pyfunc.py too
        cls = CompressedRecommender if (arts["model"] / "compressed.json").is_file() else AimassRecommender
    except InvalidInputError:
        raise
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        raise InvalidInputError(f"{ref} is not a model aimass logged (its MLmodel names no aimass scorer and "
                                "family): refusing to load it") from None
    return cls.from_files(arts["model"], arts["item_ids"], family)
