"""dvc stage `prepare`: make the demo dataset and register it; writes the registered reference."""
import json
import sys
from pathlib import Path

import yaml

import aimass

params = yaml.safe_load(Path("params.yaml").read_text())["demo"]
inter, items = aimass.datasets.generate_demo("data/demo", aimass.datasets.DemoConfig(**params))
v = aimass.datasets.register("demo", inter, "csv", items=items)
Path("data/prepared.json").write_text(json.dumps({"dataset": v.ref, "content_hash": v.content_hash}))
print(f"registered {v.ref} ({v.n_rows} interactions, {v.n_users} users, {v.n_items} items)", file=sys.stderr)
