"""Every route of a deployed model over real HTTP on 127.0.0.1: answers, lineage, keys, and bad input (a 4xx
naming the problem, never a 5xx, never a hang)."""
from __future__ import annotations

import time

import pytest

from aimass import datasets

pytestmark = pytest.mark.integration


def _lineage_ok(body: dict, model: str) -> None:
    assert body["model"] == model and body["version"] >= 1 and body["dataset"] == "demo@v1"
    assert body["request_id"]


def test_recommend_by_user_id_excludes_seen_and_carries_lineage(served):
    ds = datasets.load("demo@v1", settings=served.settings)
    user = int(ds.interactions["user_id"].iloc[0])
    seen = set(ds.interactions.loc[ds.interactions["user_id"] == user, "item_id"].tolist())
    r = served.post("recs", "/recommend", {"user_id": user, "k": 7}, headers={"X-Request-ID": "abc-123"})
    assert r.status_code == 200, r.text
    body = r.json()
    _lineage_ok(body, "recs")
    assert body["request_id"] == "abc-123" and r.headers["x-request-id"] == "abc-123"
    assert len(body["items"]) == 7 and not set(body["items"]) & seen
    assert body["scores"] == sorted(body["scores"], reverse=True)
    assert body["cold_start"] is False and body["strategy"] == "model"
    with_seen = served.post("recs", "/recommend", {"user_id": user, "k": 50, "exclude_seen": False}).json()
    assert set(with_seen["items"]) & seen


def test_recommend_by_history_with_filters_and_exclusions(served):
    ds = datasets.load("demo@v1", settings=served.settings)
    genre = ds.items.set_index("item_id")["genre"]
    r = served.post("recs", "/recommend", {"history": [1, 2, 3], "k": 5, "exclude": [4, 5],
                                           "filters": {"genre": [genre[1]]}})
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert items and all(genre[i] == genre[1] for i in items) and not set(items) & {1, 2, 3, 4, 5}


def test_cold_start_is_popular_items_labelled(served):
    for body in ({"user_id": 10**9}, {"history": []}):
        r = served.post("recs", "/recommend", {**body, "k": 5})
        assert r.status_code == 200, r.text
        out = r.json()
        # "trending" once the endpoint has enough positive feedback of its own (other tests post some)
        assert out["cold_start"] is True and out["strategy"] in ("popular", "trending") and len(out["items"]) == 5


def test_similar_and_rank(served):
    r = served.post("recs", "/similar", {"item_id": 3, "k": 4})
    assert r.status_code == 200, r.text
    assert r.json()["item_id"] == 3 and 3 not in r.json()["items"] and len(r.json()["items"]) == 4
    r = served.post("recs", "/rank", {"items": [5, 1, 9, 2], "history": [3, 4]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert sorted(out["items"]) == [1, 2, 5, 9] and out["scores"] == sorted(out["scores"], reverse=True)
    _lineage_ok(out, "recs")


@pytest.mark.parametrize("path,body,status,message", [
    ("/recommend", {"user_id": "seven"}, 400, "user_id"),
    ("/recommend", {"history": "1,2"}, 400, "history"),
    ("/rank", {"user_id": 1}, 400, "items"),
    ("/similar", {}, 400, "item_id"),
    ("/recommend", {"user_id": 1, "k": 0}, 400, "greater than or equal to 1"),
    ("/recommend", {"user_id": 1, "k": -3}, 400, "greater than or equal to 1"),
    ("/recommend", {"user_id": 1, "k": 101}, 400, "less than or equal to 100"),
    ("/recommend", {"user_id": "7"}, 400, "user_id: Value error, must be an integer"),  # no lax coercion
    ("/recommend", {"user_id": 1, "k": True}, 400, "k: Value error, must be an integer"),
    ("/recommend", {"user_id": 1, "exclude_seen": "yes"}, 400, "exclude_seen"),
    ("/recommend", {"history": [1, 2, 987654]}, 404, "unknown item ids in history: 987654"),
    ("/rank", {"items": [1, 987654], "user_id": 1}, 404, "unknown item ids in candidates: 987654"),
    ("/recommend", {"k": 5}, 400, "give a user_id or a history"),
    ("/recommend", {"user_id": 1, "filters": {"colour": ["red"]}}, 404, "unknown filter column 'colour'"),
    ("/similar", {"item_id": 987654}, 404, "unknown item id 987654"),
    ("/recommend", {"history": list(range(1, 1002))}, 400, "history"),
    ("/recommend", {"user_id": 1, "filter": {"genre": ["Comedy"]}}, 400, "filter"),  # a misspelt field: no
    ("/similar", {"item_id": 1, "K": 50}, 400, "K"),  # answer that silently ignored it
])
def test_bad_input_is_a_clear_4xx(served, path, body, status, message):
    r = served.post("recs", path, body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"] and r.headers["content-type"] == "application/json"


def test_every_error_has_one_shape(served):
    """{"error": str, "detail"?: [{loc, msg, type}]}, as the OpenAPI document declares, whoever answered."""
    answers = [served.post("recs", "/recommend", {"user_id": "x"}),  # BentoML's validation
               served.post("recs", "/recommend", {"history": [987654]}),  # the engine
               served.post("recs", "/recommend", {}, key=None),  # the key gate
               served.client.get(served.urls["recs"] + "/recommend",  # Starlette's 405
                                 headers={"Authorization": f"Bearer {served.keys['consumer']}"}),
               served.post("recs", "/recommend", content=b"user_id=1",
                           headers={"content-type": "application/x-www-form-urlencoded"})]
    assert [r.status_code for r in answers] == [400, 404, 401, 405, 415]
    for r in answers:
        body = r.json()
        assert set(body) <= {"error", "detail"} and isinstance(body["error"], str) and body["error"], body
    assert answers[0].json()["detail"][0]["loc"] == ["user_id"]
    assert answers[3].headers["allow"] == "POST"


def test_invalid_json_and_huge_bodies_are_refused(served):
    json_type = {"content-type": "application/json"}
    r = served.post("recs", "/recommend", content=b'{"user_id": 1,', headers=json_type)
    assert r.status_code == 400 and "Invalid JSON" in r.text
    huge = b'{"history": [' + b"1," * 40_000 + b"1]}"
    r = served.post("recs", "/recommend", content=huge, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than 65536 bytes" in r.text

    def chunks():  # no content-length: the limit holds on the stream too
        for _ in range(100):
            yield b"1," * 500

    r = served.post("recs", "/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_keys_are_required_and_revocation_holds(served):
    body = {"user_id": 1}
    assert served.post("recs", "/recommend", body, key=None).status_code == 401
    r = served.post("recs", "/recommend", body, key=None, headers={"Authorization": "Bearer aimass_nope"})
    assert r.status_code == 401 and "aimass_nope" not in r.text
    assert served.post("recs", "/recommend", body, key="revoked").status_code == 401
    assert served.post("recs", "/admin/info", {}, key="consumer").status_code == 403
    info = served.post("recs", "/admin/info", {}, key="admin")
    assert info.status_code == 200 and info.json()["family"] == "itemknn"
    from aimass import serving

    key, row = serving.create_key("short-lived", settings=served.settings)
    served.keys["short"] = key
    assert served.post("recs", "/recommend", body, key="short").status_code == 200
    serving.revoke_key(row.key_id, settings=served.settings)
    deadline = time.time() + 5
    while served.post("recs", "/recommend", body, key="short").status_code == 200:
        assert time.time() < deadline, "a revoked key was still accepted after 5 s"
        time.sleep(0.2)
    assert served.post("recs", "/recommend", body, key="short").status_code == 401


def test_health_metrics_and_docs(served):
    assert served.get("recs", "/healthz").json() == {"status": "ok"}
    assert served.get("recs", "/metrics").status_code == 401
    assert served.get("recs", "/metrics", key="consumer").status_code == 403
    m = served.get("recs", "/metrics", key="admin")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    assert 'aimass_requests_total{route="/recommend",status="200"}' in m.text
    assert "aimass_request_duration_seconds_bucket" in m.text
    spec = served.get("recs", "/docs.json").json()
    assert {"/recommend", "/similar", "/rank"} <= set(spec["paths"])
    assert spec["servers"] == [{"url": "/recs", "description": spec["servers"][0]["description"]}]
    body = spec["paths"]["/recommend"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["k"]["maximum"] == 100  # limits are documented
    assert [a["required"] for a in body["anyOf"]] == [["user_id"], ["history"]]  # `{}` is not a request
    assert set(spec["paths"]["/admin/info"]["post"]["responses"]) >= {"200", "400", "401", "403", "413"}
    assert set(spec["paths"]["/metrics"]["get"]["responses"]) == {"200", "401", "403"}
    scheme = spec["components"]["securitySchemes"]["apiKey"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert spec["paths"]["/recommend"]["post"]["security"] == [{"apiKey": []}]
    assert "security" not in spec["paths"].get("/healthz", {}).get("get", {})


def test_multi_stage_retrieval_ranking_rules(served):
    ds = datasets.load("demo@v1", settings=served.settings)
    artist = ds.items.set_index("item_id")["artist"]
    user = int(ds.interactions["user_id"].iloc[-1])
    seen = set(ds.interactions.loc[ds.interactions["user_id"] == user, "item_id"].tolist())
    r = served.post("multi", "/recommend", {"user_id": user, "k": 6, "max_per_artist": 1})
    assert r.status_code == 200, r.text
    out = r.json()
    stages = [(s["stage"], s["model"]) for s in out["stages"]]
    assert stages == [("retrieval", "retrieval"), ("ranking", "ranker")]
    assert out["model"] == "ranker" and out["dataset"] == "demo@v1" and out["request_id"]
    items = out["items"]
    assert 0 < len(items) <= 6 and len(set(items)) == len(items) and not set(items) & seen
    assert len({artist[i] for i in items}) == len(items)  # one per artist
    assert out["scores"] == sorted(out["scores"], reverse=True)
    cold = served.post("multi", "/recommend", {"user_id": 10**9, "k": 3}).json()
    assert cold["cold_start"] is True and len(cold["items"]) == 3
    bad = served.post("multi", "/recommend", {"history": [987654]})
    # the stage's own message, as a single model's (not the remote traceback of the stage's replica)
    assert bad.status_code == 404 and bad.json()["error"] == (
        "unknown item ids in history: 987654 (not in the catalogue of model retrieval/1)"), bad.text
    assert served.post("multi", "/recommend", {"user_id": user}, key=None).status_code == 401


def test_the_printed_curl_works(served):
    import json
    import shlex
    import shutil
    import subprocess

    from aimass import serving

    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    d = serving.show("recs", settings=served.settings)
    cmd = serving.curl_example(d, served.keys["consumer"], user_id=1, k=3)
    out = subprocess.run(shlex.split(cmd), capture_output=True, text=True, timeout=30)
    assert len(json.loads(out.stdout)["items"]) == 3, out


def test_a_path_no_endpoint_serves_is_a_json_404_naming_it(served):
    base = served.urls["recs"].rsplit("/", 1)[0]
    for path in ("/nope/recommend", "/récs/recommend"):  # a typo'd endpoint, one sent percent-encoded
        r = served.client.post(base + path, json={"user_id": 1}, headers={"Authorization": "Bearer x"})
        assert r.status_code == 404 and r.headers["content-type"].startswith("application/json"), r.text
        assert r.json()["error"].startswith("no endpoint serves the path /") and "deployments list" in r.json()["error"]
