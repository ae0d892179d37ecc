"""`aimass keys` and the input checks of `aimass deploy` / `aimass deployments`, through the real CLI. The
full deploy round trip over HTTP is in tests/serving/test_deployments.py (it needs the served cluster)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

AIMASS = str(Path(sys.executable).with_name("aimass"))


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([AIMASS, "--home", str(home), *args], capture_output=True, text=True, timeout=120)


def test_keys_are_shown_once_and_stored_hashed(tmp_path):
    home = tmp_path / "home"
    r = _cli(home, "keys", "create", "web-app", "--json")
    assert r.returncode == 0, r.stderr
    made = json.loads(r.stdout)
    key = made["key"]
    assert key.startswith(f"aimass_{made['key_id']}_") and made["role"] == "consumer"
    secret = key.removeprefix(f"aimass_{made['key_id']}_")  # url-safe base64: it may hold "_" itself
    admin = json.loads(_cli(home, "keys", "create", "ops", "--admin", "--json").stdout)
    assert admin["role"] == "admin"
    shop = _cli(home, "keys", "create", "shop", "--endpoint", "recs", "--endpoint", "search", "--expires-in", "30d")
    assert "(consumer; endpoints recs, search, expires 20" in shop.stdout, shop.stdout + shop.stderr
    shop_id = shop.stdout.split("id: ")[1].split()[0]
    listed = _cli(home, "keys", "list", "--json")
    assert key not in listed.stdout and secret not in listed.stdout
    got = {k["key_id"]: k for k in json.loads(listed.stdout)}
    assert set(got) == {made["key_id"], admin["key_id"], shop_id} and got[shop_id]["endpoints"] == "recs,search"
    assert got[shop_id]["expires_at"] > got[shop_id]["created_at"] and got[admin["key_id"]]["expires_at"] is None
    db = (home / "catalog.db").read_bytes() + b"".join(p.read_bytes() for p in home.glob("catalog.db-*"))
    assert secret.encode() not in db  # only the hash is stored
    revoked = json.loads(_cli(home, "keys", "revoke", made["key_id"], "--json").stdout)
    assert revoked["revoked_at"]
    assert {k["key_id"] for k in json.loads(_cli(home, "keys", "list", "--json").stdout)} == {admin["key_id"], shop_id}
    assert len(json.loads(_cli(home, "keys", "list", "--all", "--json").stdout)) == 3
    # a key whose output could not be written (a full disk here; a reader that closed the pipe alike) was never
    # seen: the command fails, and the key does not stay valid
    with open("/dev/full", "w") as full:
        lost = subprocess.run([AIMASS, "--home", str(home), "keys", "create", "ci-bot", "--json"], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    assert lost.returncode == 5 and "could not be written to standard output" in lost.stderr, lost.stderr
    ci = [k for k in json.loads(_cli(home, "keys", "list", "--all", "--json").stdout) if k["name"] == "ci-bot"]
    assert len(ci) == 1 and ci[0]["revoked_at"]


def test_bad_key_and_deploy_input_exit_non_zero_with_one_line(tmp_path):
    home = tmp_path / "home"
    cases = [
        (("keys", "revoke", "0123456789ab"), 3, "no API key with the id '0123456789ab'"),
        (("keys", "create", "bad/name"), 2, "invalid key name"),
        (("keys", "create", "ops", "--admin", "--endpoint", "recs"), 2, "an admin key acts on every endpoint"),
        (("keys", "create", "web", "--expires-in", "soon"), 2, "invalid --expires-in 'soon'"),
        (("deploy", "recs", "--endpoint", "Not OK"), 2, "invalid endpoint 'Not OK'"),
        (("deploy", "recs", "-e", "ok", "--min-replicas", "3", "--max-replicas", "1"), 2, "min_replicas"),
        (("deploy", "recs", "-e", "ok", "--target-ongoing-requests", "0"), 2, "must be a number in (0, 10,000]"),
        (("deploy", "nobody", "--endpoint", "ok"), 3, "no registered model named 'nobody'"),
        (("deployments", "show", "ghost"), 3, "no deployment named 'ghost'"),
        (("deployments", "delete", "ghost"), 3, "no deployment named 'ghost'"),
    ]
    for args, code, message in cases:
        r = _cli(home, *args)
        last = r.stderr.strip().splitlines()[-1]  # (MLflow logs its own start-up lines before it)
        assert r.returncode == code and last.startswith("error: ") and message in last, (args, r.stderr)
    assert json.loads(_cli(home, "deployments", "list", "--json").stdout) == []
    assert json.loads(_cli(home, "keys", "list", "--all", "--json").stdout) == []  # no refused key stored
