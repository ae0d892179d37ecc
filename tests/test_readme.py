"""The README's SDK examples name what the SDK has: a reader copies them after a plain `import aimass`."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
_NAME = r"\baimass(?:\.[A-Za-z_]\w*)+"


def _examples() -> tuple[set[str], set[str], set[str]]:
    """(names in python blocks, names called in inline code, names called with no arguments anywhere). Inline
    names not called are left out: `aimass.best_epoch` and the like are MLflow tags."""
    text = README.read_text()
    blocks = "\n".join(re.findall(r"```python\n(.*?)```", text, re.S))
    inline = "\n".join(re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S)))
    bare = set(re.findall(rf"({_NAME})\(\)", blocks + "\n" + inline))
    return set(re.findall(_NAME, blocks)), set(re.findall(rf"({_NAME})\(", inline)), bare


# In a fresh interpreter: this suite's other tests import submodules, which would make any attribute resolve.
_CHECK = """
import importlib, inspect, json, sys
import aimass
blocks, inline, bare = json.loads(sys.argv[1])
missing = []
for name in blocks:  # after a plain `import aimass`, attribute by attribute
    obj = aimass
    for part in name.split(".")[1:]:
        if not hasattr(obj, part):
            missing.append(name + ": no attribute " + part)
            break
        obj = getattr(obj, part)
for name in inline + bare:  # prose may name a module to import: the longest importable prefix, then attributes
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
            break
        except ImportError:
            continue
    for part in parts[cut:]:
        if not hasattr(obj, part):
            missing.append(name + ": no attribute " + part)
            obj = None
            break
        obj = getattr(obj, part)
    if obj is not None and name in bare and callable(obj):
        try:
            inspect.signature(obj).bind()
        except TypeError as e:
            missing.append(name + "(): " + str(e))
        except ValueError:
            pass
print(json.dumps(sorted(set(missing))))
"""


def test_readme_sdk_names_resolve():
    blocks, inline, bare = _examples()
    assert "aimass.serving.deploy" in blocks and "aimass.train" in blocks  # the parser still finds the examples
    out = subprocess.run([sys.executable, "-c", _CHECK, json.dumps([sorted(blocks), sorted(inline), sorted(bare)])],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
