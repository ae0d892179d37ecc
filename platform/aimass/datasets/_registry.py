"""The DVC data registry: a git repository holding only datasets, each version a DVC-tracked folder
`datasets/<name>/` and a git tag `<name>/v<N>`; file content lives in the DVC remote (a folder by default,
S3/GCS by setting `dvc_remote`). A registry given as a git URL is cloned into the home folder and pushed to."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import dvc  # noqa: F401  (configures DVC's loggers on import; quietened below)
import pandas as pd

from aimass.datasets._canonical import Canonical
from aimass.errors import BackendError, InvalidInputError, NotFoundError
from aimass.settings import Settings, shown_url

# DVC reports usage to a server unless told not to; nothing may leave this machine.
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# DVC logs CLI hints ("To track the changes with git, run ...") at INFO; as a library they are noise.
logging.getLogger("dvc").setLevel(logging.WARNING)

_GIT_ID = ["-c", "user.name=aimass", "-c", "user.email=aimass@localhost", "-c", "commit.gpgsign=false"]
INTERACTIONS, ITEMS, META = "interactions.parquet", "items.parquet", "meta.json"
_INITIAL = "Initialise the aimass data registry"  # the first commit's message: what marks a registry as one


def git(repo: Path, *args: str, check: bool = True) -> str:
    res = subprocess.run(["git", "-C", str(repo), *_GIT_ID, *args], capture_output=True, text=True)
    if check and res.returncode != 0:
        said = (res.stderr.strip() or res.stdout.strip()).splitlines()[-1:] or [f"exit status {res.returncode}"]
        raise BackendError(f"git {args[0]} failed in {repo}: {said[0]}")
    return res.stdout.strip()


def _without_credential(url: str) -> str:
    """`url` as the registry may commit it: without user or password."""
    from urllib.parse import urlsplit, urlunsplit

    if shown_url(url) == url:
        return url
    parts = urlsplit(url)
    if "@" not in parts.netloc:  # a secret holding "/" ends the host early: stripping the host would keep it
        raise InvalidInputError("the DVC remote URL has an '@' after a '/' in its user or password part: "
                                "percent-encode '/', '#' and '@' in the credential (%2F, %23, %40)")
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def tag_for(name: str, version: int) -> str:
    return f"{name}/v{version}"


_README = ("# aimass data registry\n\nDatasets only, versioned by tags `<name>/v<N>`; managed by `aimass datasets`. "
           "Each version's files live in the DVC remote.\n")


class DataRegistry:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.path = settings.registry_path
        self.origin = settings.registry_origin
        self._undo: tuple[str, str, str | None] | None = None  # what rollback() undoes: see commit_version
        self._new_name: str | None = None

    # -- set-up ----------------------------------------------------------------------------------------------

    def exists(self) -> bool:
        return (self.path / ".git").is_dir() and (self.path / ".dvc").is_dir()

    def ensure(self, again: bool = True) -> None:
        """Make the working copy ready: clone, or initialise a new registry here or at an empty origin. `again`:
        a clone that turns out unusable may be made once more."""
        if self.exists():
            if self.origin:
                self._check_clone()
                if again and not git(self.path, "rev-parse", "--abbrev-ref", "@{upstream}", check=False):
                    # an initialisation whose publication failed (or lost to another machine's): never used
                    # for a registration, which needs the upstream; clone again
                    shutil.rmtree(self.path)
                    return self.ensure(again=False)
                # a tag that an undo deleted and a later version made again is taken as the origin has it
                git(self.path, "fetch", "--quiet", "--tags", "--force", "origin")
            elif not self._setup_redone():
                self._check_ours()
            self._local_remote()
            return
        _without_credential(self.settings.remote)  # refused before anything is written, not halfway
        if not self.origin:
            self._check_takeable()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.origin:
            if not (self.path / ".git").is_dir():
                shown = shown_url(self.origin)  # git may quote the URL in its messages too
                res = subprocess.run(["git", "ls-remote", self.origin], capture_output=True, text=True)
                if res.returncode == 0 and not res.stdout.strip():
                    self._check_shared_remote()  # before anything is written
                res = subprocess.run(["git", "clone", "--quiet", self.origin, str(self.path)],
                                     capture_output=True, text=True)
                if res.returncode != 0:
                    raise BackendError(f"cannot clone the data registry {shown}: "
                                       f"{res.stderr.strip().replace(self.origin, shown)}")
                (self.path / ".git" / "config").chmod(0o600)  # git keeps the origin's URL there, token included
            self._check_clone()
            if (self.path / ".dvc").is_dir():
                self._local_remote()
                return
            if git(self.path, "rev-parse", "--verify", "--quiet", "HEAD", check=False):
                raise BackendError(f"the git repository {shown_url(self.origin)} is not an aimass data registry "
                                   "(it has commits but no .dvc folder): give an empty repository or a registry")
            if git(self.path, "ls-remote", "origin"):
                if not again:
                    raise BackendError(f"the git repository {shown_url(self.origin)} is not an aimass data "
                                       "registry (its default branch has no commit, other refs do)")
                shutil.rmtree(self.path)  # initialised by another machine since this clone was made
                return self.ensure(again=False)
            # an empty repository: this clone initialises the registry and publishes it
            self._check_shared_remote()
            self._initialise()
            self._local_remote()
            git(self.path, "push", "--quiet", "-u", "origin", "HEAD")  # refused: the next ensure() clones again
            return
        self.path.mkdir(parents=True, exist_ok=True)
        git(self.path, "init", "--quiet", "--initial-branch=main")
        self._initialise()
        self._local_remote()

    def _check_takeable(self) -> None:
        """A local path that is not a registry yet becomes one only when it holds nothing: initialising commits
        every file in it (a secret too) and later registrations reset and delete inside it. A bare `git init`
        (such as an initialisation that stopped before its first commit) holds nothing either."""
        p = self.path
        if not p.exists() and not p.is_symlink():
            return
        named = " (AIMASS_DATA_REGISTRY)" if self.settings.data_registry else ""
        if not p.is_dir():
            raise InvalidInputError(f"the data registry path {p}{named} is not a folder: give a new or an empty "
                                    "folder, or an aimass data registry")
        entries = sorted(e.name for e in p.iterdir())
        if entries == [".git"] and not git(p, "rev-parse", "--verify", "--quiet", "HEAD", check=False):
            return
        if entries:
            held = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise InvalidInputError(
                f"the data registry path {p}{named} is not an aimass data registry (it holds {held}, not a "
                "registry's .git and .dvc folders): give a new or an empty folder, or an existing registry; "
                "nothing in it was changed")

    def _setup_redone(self) -> bool:
        """An initialisation stopped after DVC's init and before its first commit (.git and .dvc, no commit,
        nothing but what _initialise writes) is done again; True when it was. It holds nothing of anyone's, and
        left as it was it would be refused as another project's repository at every registration."""
        if git(self.path, "rev-parse", "--verify", "--quiet", "HEAD", check=False):
            return False
        entries = {e.name for e in self.path.iterdir()}
        datasets, readme, config = self.path / "datasets", self.path / "README.md", self.path / ".dvc" / "config"
        if not entries <= {".git", ".dvc", ".dvcignore", "README.md", "datasets"} or (
                datasets.is_dir() and any(datasets.iterdir())):
            return False
        if readme.exists() and readme.read_text(errors="replace") != _README:  # someone's own project
            return False
        sections = [ln.strip() for ln in (config.read_text(errors="replace") if config.is_file() else "").splitlines()
                    if ln.strip().startswith("[")]
        if set(sections) - {"[core]", "['remote \"storage\"']"} or (self.path / ".dvc" / "config.local").exists():
            return False  # a remote of someone's own (and its credentials): not a set-up of ours
        shutil.rmtree(self.path / ".dvc")
        (self.path / ".dvcignore").unlink(missing_ok=True)
        self._initialise()
        return True

    def _check_ours(self) -> None:
        """A local git+DVC repository is used only when this code initialised it: in another DVC project a
        registration would commit what its user staged, and an undo would reset their uncommitted work."""
        roots = git(self.path, "log", "--max-parents=0", "--format=%s", "HEAD", check=False).splitlines()
        if _INITIAL not in roots:
            named = " (AIMASS_DATA_REGISTRY)" if self.settings.data_registry else ""
            raise InvalidInputError(
                f"the data registry path {self.path}{named} is not an aimass data registry (a git+DVC repository "
                f"whose first commit is not {_INITIAL!r}): give a new or an empty folder, or an existing registry; "
                "nothing in it was changed")

    def _check_clone(self) -> None:
        """The working copy is a clone of the origin (so it may be made again), not a registry of its own, such as
        the embedded one this home had before AIMASS_DATA_REGISTRY named a URL."""
        if git(self.path, "remote", "get-url", "origin", check=False) != self.origin:
            raise BackendError(f"{self.path} is not a clone of {shown_url(self.origin)}: move it away (it may be a "
                               "registry of this home's own, from before AIMASS_DATA_REGISTRY named a URL)")

    def _check_shared_remote(self) -> None:
        if not self.settings.dvc_remote:
            raise InvalidInputError(
                f"a data registry shared by git URL ({shown_url(self.origin)}) needs a DVC remote every machine "
                "reaches: set AIMASS_DVC_REMOTE (s3://..., gs://... or a shared folder), not this home's own")

    def _initialise(self) -> None:
        from dvc.repo import Repo

        Repo.init(str(self.path))
        with Repo(str(self.path)) as repo, repo.config.edit() as conf:
            conf["core"]["analytics"] = False
            conf["core"]["autostage"] = False
            # the committed URL (in a shared registry, seen by all) never carries this user's credential
            conf["remote"]["storage"] = {"url": _without_credential(self.settings.remote)}
            conf["core"]["remote"] = "storage"
        (self.path / "README.md").write_text(_README)
        (self.path / "datasets").mkdir(exist_ok=True)
        git(self.path, "add", "-A")
        git(self.path, "commit", "--quiet", "-m", _INITIAL)

    def _local_remote(self) -> None:
        """This machine's DVC remote setting, credential included, in the clone's uncommitted config.local."""
        url = self.settings.dvc_remote
        local = self.path / ".dvc" / "config.local"
        if url and not (local.exists() and f"url = {url}\n" in local.read_text()):
            from dvc.repo import Repo

            with Repo(str(self.path)) as repo, repo.config.edit("local") as conf:
                conf["remote"].setdefault("storage", {})["url"] = url
        if local.exists():  # the credential in it: DVC writes it as the umask says (an older aimass left it so)
            local.chmod(0o600)

    def head(self) -> str:
        return git(self.path, "rev-parse", "HEAD")

    def remote_url(self) -> str | None:
        if not self.exists():
            return None
        from dvc.repo import Repo

        with Repo(str(self.path)) as repo:
            name = repo.config["core"].get("remote")
            return repo.config["remote"].get(name, {}).get("url") if name else None

    # -- versions --------------------------------------------------------------------------------------------

    def commit_version(self, name: str, version: int, data: Canonical, meta: dict) -> str:
        """Write, track, commit, tag and push one version; on any failure undo every step. The caller holds the
        registry's lock, so this clone has no commit of its own that the origin lacks."""
        from dvc.repo import Repo

        tag = tag_for(name, version)
        if self.origin:  # another machine may have registered since: build on the origin's newest commit
            # and drop tags an undo deleted there (here only, under the lock: a load's fetch could drop the tag
            # of a registration that is not pushed yet)
            git(self.path, "fetch", "--quiet", "--prune", "--prune-tags", "--force", "origin")
            git(self.path, "reset", "--quiet", "--hard", "@{upstream}")
        if git(self.path, "tag", "--list", tag):
            fix = f"git push origin :refs/tags/{tag}; " if self.origin else ""
            raise BackendError(
                f"the data registry {self.path} already has the tag {tag}, which the catalog does not know (a "
                f"registration in progress elsewhere, or one whose undo failed): if none is running, remove it "
                f"({fix}git -C {self.path} tag -d {tag}) and register again")
        self._undo = (self.head(), tag, None)  # (commit to return to, tag, commit pushed to the origin)
        # a name new at that commit leaves untracked files a reset keeps: rollback() removes them
        self._new_name = None if git(self.path, "ls-files", "--", f"datasets/{name}.dvc") else name
        folder = self.path / "datasets" / name
        try:
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            data.interactions.to_parquet(folder / INTERACTIONS, index=False)
            if data.items is not None:
                data.items.to_parquet(folder / ITEMS, index=False)
            (folder / META).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
            with Repo(str(self.path)) as repo:
                repo.add(str(folder))
                git(self.path, "add", f"datasets/{name}.dvc", "datasets/.gitignore")
                # empty when the origin's branch still holds an undone registration of this very content
                git(self.path, "commit", "--quiet", "--allow-empty", "-m", f"Register {name} v{version}")
                repo.push(targets=[str(folder)])
                # tagged once its data is pushed (the longest step): a kill before leaves no tag that the
                # catalog lacks, which would refuse the name's next registration until removed by hand
                git(self.path, "tag", tag)
            if self.origin:
                git(self.path, "push", "--quiet", "--atomic", "origin", "HEAD", tag)  # both or neither
                self._undo = (*self._undo[:2], self.head())
        except BaseException as e:
            left = self.rollback()
            if not isinstance(e, Exception) or (isinstance(e, BackendError) and not left):
                raise
            raise BackendError(f"registering {name} v{version} failed and was undone{left}: {e}") from e
        return tag

    def rollback(self) -> str:
        """Undo the last commit_version: here, and at the origin when it reached it. There the tag goes (unless it
        was moved since); the branch is rewound only where the server allows it and no one has built on the
        commit, which is harmless to keep: without its tag it names no version. Returns "" or what could not be
        undone, as a clause for the caller's message."""
        assert self._undo is not None, "rollback() without a commit_version() to undo"
        head, tag, pushed = self._undo
        left = ""
        if pushed:
            def push(*args: str) -> bool:
                return subprocess.run(["git", "-C", str(self.path), "push", "--quiet", *args],
                                      capture_output=True, text=True).returncode == 0

            if not push(f"--force-with-lease=refs/tags/{tag}:{pushed}", "origin", f":refs/tags/{tag}"):
                left = (f" here, but the origin {shown_url(self.origin)} keeps the tag {tag} (remove it: git push "
                        f"origin :refs/tags/{tag})")
            upstream = git(self.path, "rev-parse", "--abbrev-ref", "@{upstream}", check=False)
            if upstream.startswith("origin/"):
                branch = upstream.removeprefix("origin/")
                push(f"--force-with-lease=refs/heads/{branch}:{pushed}", "origin", f"{head}:refs/heads/{branch}")
        git(self.path, "tag", "-d", tag, check=False)
        git(self.path, "reset", "--quiet", "--hard", head, check=False)
        if self._new_name:  # the restored .gitignore has no line for it: its data would show as uncommitted
            git(self.path, "clean", "-fdxq", "--", f"datasets/{self._new_name}", f"datasets/{self._new_name}.dvc",
                check=False)
        return left

    def materialise(self, name: str, tag: str, dest: Path) -> Path:
        """Copy a tagged version's files to `dest`, from the local cache or else the DVC remote. Safe to call
        from several processes at once (replicas of one endpoint starting together): one copies, the others
        wait and then find it done."""
        import hashlib

        from filelock import FileLock

        done = dest / ".complete"
        if done.exists() and done.read_text() == tag:
            return dest
        lock = self.settings.locks / f"pull-{hashlib.sha256(str(dest).encode()).hexdigest()[:16]}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock), timeout=1800):
            if done.exists() and done.read_text() == tag:  # another process copied it while this one waited
                return dest
            return self._copy(name, tag, dest)

    def _copy(self, name: str, tag: str, dest: Path) -> Path:
        import glob
        import uuid

        from dvc.api import DVCFileSystem

        done = dest / ".complete"
        # dest is replaced whole below: only a folder a pull made (or an empty one) may be
        if dest.exists() and not (dest.is_dir() and (done.exists() or not any(dest.iterdir()))):
            raise InvalidInputError(f"{dest} exists and is not a folder a dataset was pulled into: give a new or "
                                    "an empty folder (its contents would be replaced)")
        self.ensure()
        if not git(self.path, "tag", "--list", tag):
            raise NotFoundError(f"the data registry {self.path} has no tag {tag}")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a parent that is a file, a read-only place: the caller's choice of folder
            raise InvalidInputError(f"cannot create the folder {dest.parent}: {e.strerror or e}") from None
        # an interrupted pull's copy (this home's pulls into dest hold the lock: none is in progress)
        for left in dest.parent.glob(glob.escape(dest.name) + ".partial-*"):
            shutil.rmtree(left, ignore_errors=True)
        # a name of its own: a copy that another home's pull into the same place makes cannot mix with it
        tmp = dest.with_name(f"{dest.name}.partial-{uuid.uuid4().hex[:12]}")
        try:
            tmp.mkdir()
        except OSError as e:  # a place that has the parent but takes no new folder (/proc, a read-only one)
            raise InvalidInputError(f"cannot create a folder in {dest.parent}: {e.strerror or e}") from None
        try:
            fs = DVCFileSystem(str(self.path), rev=tag)
            for f in fs.ls(f"datasets/{name}", detail=False):
                fs.get_file(f, str(tmp / Path(f).name))
        except Exception as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise BackendError(f"cannot fetch {tag} from the data registry or its remote: {e}") from e
        (tmp / ".complete").write_text(tag)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)  # atomic: a reader never sees half a version
        return dest


def read_folder(folder: Path) -> Canonical:
    meta = json.loads((folder / META).read_text())
    items = pd.read_parquet(folder / ITEMS) if (folder / ITEMS).exists() else None
    return Canonical(pd.read_parquet(folder / INTERACTIONS), items, meta["timestamp_kind"])
