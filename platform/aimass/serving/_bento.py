"""`bentoml build` of a registered version: the family's bentos/<family>/bentofile.yaml into a Bento store
under home/bentos, pinned to that version by a `pin.json` beside service.py (a bentofile's `envs` reach only
container images, not `bentoml serve`). Run in a child process because BentoML reads BENTOML_HOME (its
store) once, at import."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from aimass.errors import BackendError, InvalidInputError
from aimass.settings import Settings

BENTOS = Path(__file__).resolve().parents[3] / "bentos"  # the repository's bentos/ (editable install)
_BUILD = """
import json, sys
import bentoml
from bentoml._internal.bento.build_config import BentoEnvSchema
spec = json.loads(sys.argv[1])
spec["envs"] = [BentoEnvSchema(**e) for e in spec["envs"]]
bento = bentoml.bentos.build(**spec)
print(json.dumps({"tag": str(bento.tag)}))
"""


PIN = "pin.json"


def pin(service_file: str) -> None:
    """Called by bentos/<family>/service.py: a built Bento serves the version it was built from unless the
    environment names another (AIMASS_SERVE_MODEL, which Settings then reads)."""
    f = Path(service_file).with_name(PIN)
    if f.is_file():
        for k, v in json.loads(f.read_text()).items():
            os.environ.setdefault(k, v)


def store(settings: Settings) -> Path:
    return settings.home / "bentos"


def bento_name(model: str) -> str:
    """The Bento of a registered model's versions: BentoML lowercases a tag's name (so "Recs" and "recs" would
    share one Bento, and the store's folder would not be found under "Recs") and allows 63 characters ending in
    a letter or digit, where the registry allows 64, either case and a trailing "." "_" "-": such a name gets a
    digest of its exact spelling."""
    name = f"aimass-{model}"
    if name == name.lower() and len(name) <= 63 and name[-1].isalnum():
        return name
    return f"aimass-{model.lower()[:40].rstrip('._-')}-{hashlib.sha1(model.encode()).hexdigest()[:10]}"


def build(ref: str, settings: Settings) -> str:
    from aimass import registry

    info = registry.get(ref, settings=settings)
    folder = BENTOS / (info.family or "")
    if not (folder / "bentofile.yaml").is_file():
        raise InvalidInputError(f"no bentofile for family {info.family!r} under {BENTOS}")
    name, version = bento_name(info.name), f"v{info.version}"
    if (store(settings) / "bentos" / name / version / "bento.yaml").is_file():
        return f"{name}:{version}"  # a registered version is immutable, and so is its Bento
    spec = yaml.safe_load((folder / "bentofile.yaml").read_text())
    envs = [*spec.pop("envs", []), {"name": "AIMASS_SERVE_MODEL", "value": info.ref}]
    labels = {**spec.pop("labels", {}), "model": info.name, "model_version": str(info.version),
              "dataset": info.dataset or ""}
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp) / info.family
        shutil.copytree(folder, ctx)
        (ctx / PIN).write_text(json.dumps({"AIMASS_SERVE_MODEL": info.ref}))
        args = {**spec, "include": [*spec.get("include", []), PIN], "envs": envs, "labels": labels,
                "build_ctx": str(ctx), "name": name, "version": version}
        env = {**os.environ, "BENTOML_HOME": str(store(settings)), "BENTOML_DO_NOT_TRACK": "True"}
        r = subprocess.run([sys.executable, "-c", _BUILD, json.dumps(args)], env=env, capture_output=True,
                           text=True, timeout=600)
    if r.returncode != 0:
        raise BackendError(f"bentoml build of {info.ref} failed: {r.stderr.strip()[-800:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])["tag"]
