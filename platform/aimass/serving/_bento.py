"""`bentoml build` of a registered version: the family's bentos/<family>/bentofile.yaml, with
AIMASS_SERVE_MODEL pinned to that version, into a Bento store under home/bentos. Run in a child process
because BentoML reads BENTOML_HOME (its store) once, at import."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from aimass.errors import BackendError, InvalidInputError
from aimass.settings import Settings

BENTOS = Path(__file__).resolve().parents[3] / "bentos"  # the repository's bentos/ (editable install)
_BUILD = """
import json, sys
import bentoml
spec = json.loads(sys.argv[1])
bento = bentoml.bentos.build(**spec)
print(json.dumps({"tag": str(bento.tag)}))
"""


def store(settings: Settings) -> Path:
    return settings.home / "bentos"


def build(ref: str, settings: Settings) -> str:
    from aimass import registry

    info = registry.get(ref, settings=settings)
    folder = BENTOS / (info.family or "")
    if not (folder / "bentofile.yaml").is_file():
        raise InvalidInputError(f"no bentofile for family {info.family!r} under {BENTOS}")
    spec = yaml.safe_load((folder / "bentofile.yaml").read_text())
    envs = [*spec.pop("envs", []), {"name": "AIMASS_SERVE_MODEL", "value": info.ref}]
    labels = {**spec.pop("labels", {}), "model": info.name, "model_version": str(info.version),
              "dataset": info.dataset or ""}
    args = {**spec, "envs": envs, "labels": labels, "build_ctx": str(folder),
            "name": f"aimass-{info.name}", "version": f"v{info.version}"}
    env = {**os.environ, "BENTOML_HOME": str(store(settings)), "BENTOML_DO_NOT_TRACK": "True"}
    r = subprocess.run([sys.executable, "-c", _BUILD, json.dumps(args)], env=env, capture_output=True,
                       text=True, timeout=600)
    if r.returncode != 0:
        raise BackendError(f"bentoml build of {info.ref} failed: {r.stderr.strip()[-800:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])["tag"]
