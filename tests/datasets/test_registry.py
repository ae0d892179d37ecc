"""Versioning, idempotence, bad input and remote pulls, against real git, real DVC and real SQLite."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from aimass import datasets
from aimass.errors import ConflictError, InvalidInputError, NotFoundError
from aimass.settings import Settings
from tests.conftest import state_of


def _csv(path: Path, n_users: int = 4, extra: dict | None = None) -> Path:
    rows = [(u, i, 1_700_000_000 + 10 * u + i) for u in range(1, n_users + 1) for i in range(1, 4)]
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    for k, v in (extra or {}).items():
        df[k] = v
    df.to_csv(path, index=False)
    return path


def test_identical_content_is_idempotent_and_changes_bump(settings, tmp_path):
    src = _csv(tmp_path / "a.csv")
    v1 = datasets.register("plays", src, "csv", settings=settings)
    before = state_of(settings)
    again = datasets.register("plays", src, "csv", settings=settings)
    assert (again.version, again.id, again.content_hash) == (1, v1.id, v1.content_hash)
    assert state_of(settings) == before  # nothing new in catalog, git or remote
    v2 = datasets.register("plays", _csv(tmp_path / "b.csv", n_users=5), "csv", settings=settings)
    assert v2.version == 2 and v2.content_hash != v1.content_hash
    assert datasets.get("plays", settings=settings).version == 2  # no version means the latest
    assert datasets.get("plays@v1", settings=settings).n_users == 4
    assert [v.version for v in datasets.versions("plays", settings=settings)] == [1, 2]
    assert [d.ref for d in datasets.list(settings=settings)] == ["plays@v2"]
    # re-registering v1's content after v2 returns v1, it does not make v3
    assert datasets.register("plays", src, "csv", settings=settings).version == 1
    tags = subprocess.run(["git", "-C", str(settings.registry_path), "tag"], capture_output=True, text=True)
    assert tags.stdout.split() == ["plays/v1", "plays/v2"]


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


BAD = {
    "missing path": lambda t: ("x", t / "nope.csv", "csv", "does not exist"),
    "unknown format": lambda t: ("x", _csv(t / "f.csv"), "xlsx", "unknown format 'xlsx'"),
    "malformed line": lambda t: ("x", _write(t, "s.txt", "1 2\n3\n"), "sasrec", "s.txt:2: expected 2 fields"),
    "non-integer ids (sasrec)": lambda t: ("x", _write(t, "n.txt", "1 2\nu3 4\n"), "sasrec", "must be integers"),
    "non-integer ids (csv)": lambda t: ("x", _write(t, "n.csv", "user_id,item_id,timestamp\n1,a,3\n"), "csv",
                                        "item_id must hold integers, found 'a'"),
    "infinite value": lambda t: ("x", _write(t, "v.csv", "user_id,item_id,timestamp,value\n1,1,3,2.5\n1,2,4,-inf\n"),
                                 "csv", "column value has infinite values"),
    "empty file": lambda t: ("x", _write(t, "e.csv", ""), "csv", "empty"),
    "header only": lambda t: ("x", _write(t, "h.csv", "user_id,item_id,timestamp\n"), "csv", "no rows"),
    "missing column": lambda t: ("x", _write(t, "m.csv", "user_id,item_id\n1,2\n"), "csv", "missing column"),
    # every row one field longer than the header: pandas took the first as an index and shifted the columns
    "rows longer than the header": lambda t: ("x", _write(t, "w.csv", "user_id,item_id,timestamp\n1,2,3,9\n4,5,6,7\n"),
                                              "csv", "rows have more fields than the header names"),
    "path separator in name": lambda t: ("a/b", _csv(t / "f.csv"), "csv", "invalid dataset name"),
    "dot-dot name": lambda t: ("..", _csv(t / "f.csv"), "csv", "invalid dataset name"),
    "shell characters in name": lambda t: ("x;rm -rf", _csv(t / "f.csv"), "csv", "invalid dataset name"),
    "space in name": lambda t: ("my data", _csv(t / "f.csv"), "csv", "invalid dataset name"),
    # git refuses a tag under a ref component ending in .lock; DVC keeps NAME's pointer as NAME.dvc
    "name ending in .lock": lambda t: ("plays.lock", _csv(t / "f.csv"), "csv", "may not end in '.lock' or '.dvc'"),
    "name ending in .dvc": lambda t: ("plays.dvc", _csv(t / "f.csv"), "csv", "may not end in '.lock' or '.dvc'"),
    # serving, feedback and the catalog take ids from 0 to 2**62 only; int64 would wrap a larger uint64
    "negative id (csv)": lambda t: ("x", _write(t, "n.csv", "user_id,item_id,timestamp\n1,-5,3\n"), "csv",
                                    "column item_id must hold integers from 0 to 2**62, found -5"),
    "uint64 id (parquet)": lambda t: ("x", _uint64_parquet(t / "u.parquet"), "parquet",
                                      f"column user_id must hold integers from 0 to 2**62, found {2**64 - 1}"),
    "id beyond int64 (sasrec)": lambda t: ("x", _write(t, "b.txt", "1 2\n1 99999999999999999999\n"), "sasrec",
                                           "b.txt:2: ids must be integers from 0 to 2**62, found 99999999999999999999"),
    "negative id (sasrec)": lambda t: ("x", _write(t, "m.txt", "-1 2\n"), "sasrec",
                                       "m.txt:1: ids must be integers from 0 to 2**62, found -1"),
    "binary file (sasrec)": lambda t: ("x", _write_bytes(t / "bin.txt", b"1 2\n\xff\xfe\x00\x81\n"), "sasrec",
                                       "bin.txt: not a UTF-8 text file"),
    # evaluation's ml1m-seq protocol takes a user's one 'val' / 'test' row as its target, and needs some 'val'
    "two val rows for a user": lambda t: ("x", _split_csv(t, ["train", "val", "val", "test"]), "csv",
                                          "at most one split 'val' row (the val target), but user 1 has 2"),
    "two test rows for a user": lambda t: ("x", _split_csv(t, ["train", "val", "test", "test"]), "csv",
                                           "at most one split 'test' row (the test target), but user 1 has 2"),
    "split without val rows": lambda t: ("x", _split_csv(t, ["train", "train", "val_input", "test"], other=False),
                                         "csv", "needs some 'val' rows"),
}


def _write_bytes(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def _uint64_parquet(p: Path) -> Path:
    import numpy as np

    pd.DataFrame({"user_id": np.array([1, 2**64 - 1], dtype=np.uint64), "item_id": [1, 2],
                  "timestamp": [1, 2]}).to_parquet(p)
    return p


def _split_csv(t: Path, roles: list[str], other: bool = True) -> Path:
    """User 1 with the given roles in time order; `other`: user 2 too, laid out as evaluation wants."""
    rows = [(1, i + 1, i, r) for i, r in enumerate(roles)]
    rows += [(2, 1, 0, "train"), (2, 2, 1, "val"), (2, 3, 2, "test")] if other else []
    return _write(t, "split.csv", "user_id,item_id,timestamp,split\n" + "".join(f"{u},{i},{ts},{r}\n"
                                                                               for u, i, ts, r in rows))


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_refused_and_changes_nothing(settings, tmp_path, case):
    datasets.register("base", _csv(tmp_path / "base.csv"), "csv", settings=settings)
    before = state_of(settings)
    name, path, fmt, message = BAD[case](tmp_path)
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        datasets.register(name, path, fmt, settings=settings)
    assert state_of(settings) == before


def test_a_pull_into_a_folder_that_cannot_be_made_is_bad_input(settings, tmp_path):
    datasets.register("plays", _csv(tmp_path / "a.csv", n_users=6), "csv", settings=settings)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InvalidInputError, match="cannot create the folder .*afile"):  # was a raw FileExistsError
        datasets.pull("plays", tmp_path / "afile" / "sub" / "plays", settings=settings)
    with pytest.raises(InvalidInputError, match="cannot create a folder in /proc"):  # was a raw FileNotFoundError
        datasets.pull("plays", "/proc/plays", settings=settings)


def test_concurrent_pulls_of_one_version_into_one_folder_all_get_it_whole(settings, tmp_path):
    """Replicas of one endpoint starting together pull the same version into the same place: each gets the
    complete folder, and no half-copied `.partial-*` folder is left beside it."""
    import threading

    datasets.register("plays", _csv(tmp_path / "a.csv", n_users=6), "csv", settings=settings)
    dest = tmp_path / "shared" / "plays"
    (tmp_path / "shared" / "plays.partial-0123abcd").mkdir(parents=True)  # what an interrupted pull left
    default = settings.home / "datasets" / "plays" / "v1"  # the home's own cache, empty too
    barrier = threading.Barrier(8)
    results: dict = {}

    def go(i: int) -> None:
        barrier.wait()
        try:
            results[i] = datasets.pull("plays@v1", dest if i % 2 else None, settings=settings)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            results[i] = e

    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert results == {i: dest if i % 2 else default for i in range(8)}
    for folder in (dest, default):
        assert sorted(p.name for p in folder.iterdir()) == [".complete", "interactions.parquet", "meta.json"]
        assert (folder / ".complete").read_text() == "plays/v1"
        assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no .partial-* left
    assert pd.read_parquet(dest / "interactions.parquet")["user_id"].nunique() == 6
    assert datasets.load("plays@v1", settings=settings).info.n_users == 6


def test_load_of_a_name_reads_the_version_it_looked_up_while_a_newer_one_is_registered(settings, tmp_path,
                                                                                        monkeypatch):
    """`load("plays")` looks the latest version up once: a version another user registers between that
    look-up and the copy is not mistaken for it (which failed the content-hash check, a ConflictError)."""
    datasets.register("plays", _csv(tmp_path / "a.csv", n_users=4), "csv", settings=settings)
    real_get = datasets.get
    calls: list[str] = []

    def get_then_another_registers(ref, **kw):
        info = real_get(ref, **kw)
        calls.append(ref)
        if len(calls) == 1:  # right after load's own look-up, someone else registers v2
            datasets.register("plays", _csv(tmp_path / "b.csv", n_users=7), "csv", settings=settings)
        return info

    monkeypatch.setattr(datasets, "get", get_then_another_registers)
    ds = datasets.load("plays", settings=settings)
    assert (ds.info.version, ds.info.n_users, ds.interactions["user_id"].nunique()) == (1, 4, 4)
    monkeypatch.undo()
    assert datasets.load("plays", settings=settings).info.n_users == 7  # v2 was registered meanwhile


def test_a_registration_interrupted_during_the_catalog_commit_leaves_no_tag_and_frees_the_version(
        settings, tmp_path, monkeypatch):
    """Ctrl-C while the catalog commits the row: git's tag for the version is undone with it, so the next
    registration of the name takes the same version number instead of failing on a tag without a row."""
    from sqlmodel import Session

    datasets.register("plays", _csv(tmp_path / "a.csv"), "csv", settings=settings)
    before = state_of(settings)
    real_commit = Session.commit
    interrupted: list[bool] = []

    def commit_interrupted_once(self):
        if not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt
        return real_commit(self)

    monkeypatch.setattr(Session, "commit", commit_interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        datasets.register("plays", _csv(tmp_path / "b.csv", n_users=6), "csv", settings=settings)
    monkeypatch.undo()
    after = state_of(settings)
    assert interrupted and after["tags"].split() == ["plays/v1"]
    # no commit, file or row of v2 (the remote may keep its pushed blobs: content-addressed, harmless)
    assert {k: after[k] for k in ("catalog", "head", "files")} == {k: before[k] for k in ("catalog", "head", "files")}
    again = datasets.register("plays", _csv(tmp_path / "b.csv", n_users=6), "csv", settings=settings)
    assert (again.version, again.n_users) == (2, 6)
    assert datasets.load("plays@v2", settings=settings).info.n_users == 6


def test_incompatible_schema_is_refused(settings, tmp_path):
    datasets.register("plays", _csv(tmp_path / "a.csv"), "csv", settings=settings)
    before = state_of(settings)
    with pytest.raises(ConflictError, match="has schema interactions\\(user_id, item_id, timestamp\\)"):
        datasets.register("plays", _csv(tmp_path / "b.csv", extra={"value": 1.0}), "csv", settings=settings)
    assert state_of(settings) == before


def test_unknown_dataset_and_version(settings, tmp_path):
    with pytest.raises(NotFoundError, match="no dataset named 'ghost'"):
        datasets.get("ghost", settings=settings)
    datasets.register("plays", _csv(tmp_path / "a.csv"), "csv", settings=settings)
    before = state_of(settings)
    with pytest.raises(NotFoundError, match="has no version 9 \\(latest is v1\\)"):
        datasets.load("plays@v9", settings=settings)
    with pytest.raises(InvalidInputError, match="invalid dataset reference"):
        datasets.get("plays@v1@v2", settings=settings)
    assert state_of(settings) == before


@pytest.mark.parametrize("name", ["plays", "clicks"])
def test_failure_inside_the_registry_rolls_back(settings, tmp_path, name):
    """A DVC push that fails (the remote is a file, not a folder) leaves no tag, commit or catalog row; the
    undo of a new name's first version ("clicks") removes its files too: the restored .gitignore has no line
    for them, so they would stay as uncommitted changes that `aimass doctor` reports as an unfinished write."""
    datasets.register("plays", _csv(tmp_path / "a.csv"), "csv", settings=settings)
    before = state_of(settings)
    remote = Path(settings.remote)
    shutil.move(remote, tmp_path / "remote-moved")
    remote.write_text("not a folder")  # DVC's push fails after the files were written, added and committed
    try:
        with pytest.raises(Exception, match="failed and was undone"):
            datasets.register(name, _csv(tmp_path / "b.csv", n_users=6), "csv", settings=settings)
    finally:
        remote.unlink()
        shutil.move(tmp_path / "remote-moved", remote)
    assert state_of(settings) == before
    assert datasets.registry_status(settings=settings)["uncommitted"] == ""
    if name == "clicks":
        assert not (settings.registry_path / "datasets" / "clicks").exists()
        assert datasets.register("clicks", _csv(tmp_path / "b.csv", n_users=6), "csv", settings=settings).version == 1


@pytest.mark.integration
def test_fresh_clone_with_empty_cache_pulls_from_the_remote(settings, tmp_path):
    src = _csv(tmp_path / "a.csv")
    v = datasets.register("plays", src, "csv", settings=settings)
    datasets.register("plays", _csv(tmp_path / "b.csv", n_users=7), "csv", settings=settings)
    # Only the remote keeps the files now: drop the registry's cache and working copies.
    shutil.rmtree(settings.registry_path / ".dvc" / "cache")
    shutil.rmtree(settings.registry_path / "datasets" / "plays")
    # Another machine: its own home, the shared catalog, the registry by git URL.
    other = Settings(home=tmp_path / "other", catalog_url=settings.catalog,
                     data_registry=f"file://{settings.registry_path}")
    ds = datasets.load("plays@v1", settings=other)
    clone = other.registry_path
    assert (clone / ".git").is_dir() and clone != settings.registry_path
    assert not (clone / ".dvc" / "cache").exists() or not any((clone / ".dvc" / "cache").rglob("*.parquet"))
    expected = pd.read_csv(src).sort_values("timestamp").reset_index(drop=True)
    pd.testing.assert_frame_equal(ds.interactions, expected, check_dtype=False)
    assert ds.info.content_hash == v.content_hash
    assert datasets.load("plays", settings=other).info.n_users == 7
    out = datasets.pull("plays@v1", tmp_path / "export", settings=other)
    assert sorted(p.name for p in out.iterdir()) == [".complete", "interactions.parquet", "meta.json"]
    assert datasets.pull("plays@v2", out, settings=other) == out  # a pulled folder takes another version
    assert pd.read_parquet(out / "interactions.parquet")["user_id"].nunique() == 7
    # a folder of the user's own is never replaced: the pull is refused and the folder kept as it was
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(InvalidInputError, match="is not a folder a dataset was pulled into"):
        datasets.pull("plays@v1", mine, settings=other)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def _origin_state(bare: Path) -> tuple[str, str]:
    out = [subprocess.run(["git", "-C", str(bare), *args], capture_output=True, text=True).stdout
           for args in (["for-each-ref", "--format=%(refname) %(objectname)"], ["log", "--all", "--oneline"])]
    return out[0], out[1]


@pytest.mark.integration
def test_a_shared_origin_is_initialised_built_on_by_two_machines_and_undone_at(tmp_path):
    """A registry given as a git URL: an empty repository is initialised by the first user, each machine builds
    on the other's newest commit, and a registration whose catalog commit fails is undone at the origin too, so
    the version stays free for the next attempt, even where the server refuses to rewind its branch."""
    bare = tmp_path / "origin.git"
    subprocess.run(["git", "init", "--quiet", "--bare", str(bare)], check=True)
    shared = dict(data_registry=f"file://{bare}", dvc_remote=str(tmp_path / "shared-remote"))
    a = Settings(home=tmp_path / "a", **shared)
    b = Settings(home=tmp_path / "b", catalog_url=a.catalog, **shared)
    c = Settings(home=tmp_path / "c", catalog_url=a.catalog, **shared)
    assert datasets.register("plays", _csv(tmp_path / "1.csv"), "csv", settings=a).version == 1
    assert datasets.register("plays", _csv(tmp_path / "2.csv", n_users=5), "csv", settings=b).version == 2
    assert datasets.register("clicks", _csv(tmp_path / "3.csv"), "csv", settings=a).version == 1
    refs, _ = _origin_state(bare)
    assert sorted(r.split()[0] for r in refs.splitlines() if "/tags/" in r) == [
        "refs/tags/clicks/v1", "refs/tags/plays/v1", "refs/tags/plays/v2"]
    assert datasets.load("plays@v2", settings=a).info.n_users == 5  # a reads what b registered
    assert datasets.load("plays@v1", settings=c).info.n_users == 4

    # The catalog refuses the row after the registry pushed (a real SQLite trigger), on a server that refuses to
    # rewind a branch: the tag is deleted at the origin all the same.
    import sqlite3

    subprocess.run(["git", "-C", str(bare), "config", "receive.denyNonFastForwards", "true"], check=True)
    db = sqlite3.connect(a.home / "catalog.db")
    db.execute("CREATE TRIGGER refuse BEFORE INSERT ON dataset_versions BEGIN "
               "SELECT RAISE(ABORT, 'the catalog is read-only today'); END")
    db.commit()
    tags_before = _origin_state(bare)[0].count("refs/tags/")
    with pytest.raises(Exception, match="read-only today"):
        datasets.register("plays", _csv(tmp_path / "4.csv", n_users=6), "csv", settings=b)
    assert _origin_state(bare)[0].count("refs/tags/") == tags_before and "plays/v3" not in _origin_state(bare)[0]
    db.execute("DROP TRIGGER refuse")
    db.commit()
    db.close()
    # c fetched the tag before it was undone (as a clone may): its own registration of version 3 drops it
    subprocess.run(["git", "-C", str(c.registry_path), "tag", "plays/v3", "HEAD"], check=True)
    assert datasets.register("plays", _csv(tmp_path / "4.csv", n_users=6), "csv", settings=c).version == 3
    assert datasets.load("plays@v3", settings=a).info.n_users == 6
    # and a clone still holding a stale tag takes the origin's version 3 over it when it loads
    subprocess.run(["git", "-C", str(b.registry_path), "tag", "-f", "plays/v3", "plays/v1"], check=True)
    assert datasets.load("plays@v3", settings=b).info.n_users == 6


def test_a_shared_origin_without_a_shared_dvc_remote_is_refused(tmp_path):
    bare = tmp_path / "origin.git"
    subprocess.run(["git", "init", "--quiet", "--bare", str(bare)], check=True)
    s = Settings(home=tmp_path / "home", data_registry=f"file://{bare}")
    with pytest.raises(InvalidInputError, match="needs a DVC remote every machine reaches: set AIMASS_DVC_REMOTE"):
        datasets.register("plays", _csv(tmp_path / "1.csv"), "csv", settings=s)
    assert not s.registry_path.exists() and _origin_state(bare) == ("", "")


def test_an_origin_that_is_not_a_registry_is_refused(tmp_path):
    work = tmp_path / "work"
    subprocess.run(["git", "init", "--quiet", str(work)], check=True)
    (work / "x.txt").write_text("x")
    subprocess.run(["git", "-C", str(work), "add", "x.txt"], check=True)
    subprocess.run(["git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet",
                    "-m", "x"], check=True)
    s = Settings(home=tmp_path / "home", data_registry=f"file://{work}", dvc_remote=str(tmp_path / "remote"))
    with pytest.raises(Exception, match="is not an aimass data registry"):
        datasets.register("plays", _csv(tmp_path / "1.csv"), "csv", settings=s)
    assert not (s.home / "catalog.db").exists() or state_of(s)["catalog"] == []


def test_a_credential_in_the_dvc_remote_stays_out_of_the_shared_history(tmp_path):
    from aimass.datasets._registry import DataRegistry

    bare = tmp_path / "origin.git"
    subprocess.run(["git", "init", "--quiet", "--bare", str(bare)], check=True)
    s = Settings(home=tmp_path / "home", data_registry=f"file://{bare}", dvc_remote="s3://key:s3cr3t@bucket/data")
    DataRegistry(s).ensure()  # initialises the empty origin and publishes it; no data is pushed yet
    shown = subprocess.run(["git", "-C", str(bare), "show", "HEAD:.dvc/config"], capture_output=True, text=True)
    assert "url = s3://bucket/data" in shown.stdout and "s3cr3t" not in shown.stdout
    assert "s3cr3t" not in subprocess.run(["git", "-C", str(bare), "log", "-p", "--all"], capture_output=True,
                                          text=True).stdout
    assert "url = s3://key:s3cr3t@bucket/data" in (s.registry_path / ".dvc" / "config.local").read_text()
    # owner-only, as git's config of the clone (its origin's URL may carry a token)
    assert {(s.registry_path / f).stat().st_mode & 0o777 for f in (".dvc/config.local", ".git/config")} == {0o600}
    # a registry of one's own keeps the credential out of its commits the same way
    mine = Settings(home=tmp_path / "mine", dvc_remote="s3://key:s3cr3t@bucket/data")
    DataRegistry(mine).ensure()
    assert "s3cr3t" not in subprocess.run(["git", "-C", str(mine.registry_path), "log", "-p", "--all"],
                                          capture_output=True, text=True).stdout
    assert "s3cr3t" in (mine.registry_path / ".dvc" / "config.local").read_text()
    assert (mine.registry_path / ".dvc" / "config.local").stat().st_mode & 0o777 == 0o600
    # a secret whose "/" ends the URL's host early is refused before anything is written
    bad = Settings(home=tmp_path / "bad", dvc_remote="s3://AKIA:wJal/rXUt@bucket/data")
    with pytest.raises(InvalidInputError, match="percent-encode"):
        DataRegistry(bad).ensure()
    assert not bad.registry_path.exists()


def test_a_home_registry_of_its_own_is_never_replaced_by_a_clone(settings, tmp_path):
    """A home that registered locally, then named a shared origin: its own registry is refused, not re-cloned."""
    datasets.register("plays", _csv(tmp_path / "1.csv"), "csv", settings=settings)
    before = state_of(settings)
    bare = tmp_path / "origin.git"
    subprocess.run(["git", "init", "--quiet", "--bare", str(bare)], check=True)
    shared = settings.model_copy(update={"data_registry": f"file://{bare}", "dvc_remote": str(tmp_path / "r")})
    assert shared.registry_path == settings.registry_path
    with pytest.raises(Exception, match="is not a clone of"):
        datasets.load("plays@v1", settings=shared)
    assert state_of(settings) == before


def test_a_local_registry_path_holding_other_files_is_refused_and_left_as_it_was(tmp_path):
    """AIMASS_DATA_REGISTRY naming a folder of the user's own (a project with a .env secret, say) is not taken
    over: initialising would commit every file in it, and registrations reset and delete inside it."""
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / ".env").write_text("SECRET=hunter2\n")
    (mine / "README.md").write_text("my project\n")
    s = Settings(home=tmp_path / "home", data_registry=str(mine))
    with pytest.raises(InvalidInputError, match=f"data registry path {mine} .*is not an aimass data registry "
                                                r"\(it holds \.env, README\.md"):
        datasets.register("plays", _csv(tmp_path / "1.csv"), "csv", settings=s)
    assert sorted(p.name for p in mine.iterdir()) == [".env", "README.md"]
    assert (mine / "README.md").read_text() == "my project\n" and not state_of(s)["catalog"]
    # a file where the folder should be is refused the same way
    as_file = Settings(home=tmp_path / "home", data_registry=str(mine / ".env"))
    with pytest.raises(InvalidInputError, match="is not a folder"):
        datasets.register("plays", _csv(tmp_path / "1.csv"), "csv", settings=as_file)
    # so is another git+DVC project: a registration would commit what is staged there, an undo reset it
    dvc_project = tmp_path / "dvc-project"
    subprocess.run(["git", "init", "--quiet", str(dvc_project)], check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--quiet"], cwd=dvc_project, check=True)
    subprocess.run(["git", "-C", str(dvc_project), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet",
                    "-m", "my project"], check=True)
    (dvc_project / "work.txt").write_text("uncommitted work\n")
    head = subprocess.run(["git", "-C", str(dvc_project), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    theirs = Settings(home=tmp_path / "home", data_registry=str(dvc_project))
    with pytest.raises(InvalidInputError, match="is not an aimass data registry .*first commit"):
        datasets.register("plays", _csv(tmp_path / "1.csv"), "csv", settings=theirs)
    assert (dvc_project / "work.txt").read_text() == "uncommitted work\n"
    assert subprocess.run(["git", "-C", str(dvc_project), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout == head and not (dvc_project / "datasets").exists()
    # an empty folder, a bare `git init` without a commit, or an initialisation stopped after DVC's init and
    # before its first commit, becomes the registry
    def interrupted(p: Path) -> None:
        subprocess.run(["git", "init", "--quiet", str(p)], check=True)
        subprocess.run([sys.executable, "-m", "dvc", "init", "--quiet"], cwd=p, check=True)

    for name, make in (("empty", lambda p: p.mkdir()),
                       ("bare", lambda p: subprocess.run(["git", "init", "--quiet", str(p)], check=True)),
                       ("interrupted", interrupted)):
        make(tmp_path / name)
        ok = Settings(home=tmp_path / f"home-{name}", data_registry=str(tmp_path / name))
        assert datasets.register("plays", _csv(tmp_path / "1.csv"), "csv", settings=ok).version == 1
        assert (tmp_path / name / ".dvc").is_dir()
        assert datasets.load("plays@v1", settings=ok).info.n_users == 4
    # but someone's own DVC project with no commit yet (its README, its remote) is not taken for one
    own = tmp_path / "own"
    subprocess.run(["git", "init", "--quiet", str(own)], check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--quiet"], cwd=own, check=True)
    (own / "README.md").write_text("# my project\n")
    config = (own / ".dvc" / "config").read_text()
    with pytest.raises(InvalidInputError, match="is not an aimass data registry"):
        datasets.register("plays", _csv(tmp_path / "1.csv"), "csv",
                          settings=Settings(home=tmp_path / "home-own", data_registry=str(own)))
    assert (own / "README.md").read_text() == "# my project\n" and (own / ".dvc" / "config").read_text() == config


@pytest.mark.parametrize("ref", ["plays\n", "plays@v1\n", "plays@latest\n", "plays\n@v1"])
def test_a_dataset_name_or_reference_with_a_trailing_newline_is_refused(ref):
    with pytest.raises(InvalidInputError, match="invalid dataset"):
        datasets.parse_ref(ref)
    with pytest.raises(InvalidInputError, match="invalid dataset name"):
        datasets.check_name("plays\n")
