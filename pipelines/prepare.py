"""dvc stage `prepare`: make the demo dataset and register it; writes the registered reference, with the home
and the time it was registered there, so that the stages after it run again in a new home."""
import json
import sys
from pathlib import Path

import yaml

import aimass

settings = aimass.Settings()
params = yaml.safe_load(Path("params.yaml").read_text())["demo"]
inter, items = aimass.datasets.generate_demo("data/demo", aimass.datasets.DemoConfig(**params))
v = aimass.datasets.register("demo", inter, "csv", items=items, settings=settings)
Path("data/prepared.json").write_text(json.dumps({
    "dataset": v.ref, "content_hash": v.content_hash, "home": str(settings.home.resolve()),
    "registered_at": v.created_at.isoformat()}))
print(f"registered {v.ref} ({v.n_rows} interactions, {v.n_users} users, {v.n_items} items)", file=sys.stderr)
