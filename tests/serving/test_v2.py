"""The Open Inference Protocol v2 face (aimass.serving._v2) over a real deployment: Triton's own HTTP client
(tritonclient) gets what /recommend answers the same users, health and metadata answer as the protocol says,
and bad requests get a 4xx naming what is wrong."""
from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as triton

pytestmark = pytest.mark.integration


def _client(served, endpoint: str = "recs") -> triton.InferenceServerClient:
    base = served.urls[endpoint].removeprefix("http://")
    return triton.InferenceServerClient(base, connection_timeout=30, network_timeout=30)


def _auth(served, key: str = "consumer") -> dict:
    return {"Authorization": f"Bearer {served.keys[key]}"}


def test_a_triton_client_gets_what_recommend_answers(served):
    users = [1, 2, 3, 999_999]  # the last one unknown: a cold start, as on /recommend
    c = _client(served)
    assert c.is_server_live() and c.is_server_ready()  # health needs no key, like /healthz
    assert c.is_model_ready("recs", headers=_auth(served))
    meta = c.get_model_metadata("recs", headers=_auth(served))
    assert meta["name"] == "recs" and [i["name"] for i in meta["inputs"]] == ["user_id", "k"]
    ids = triton.InferInput("user_id", [len(users)], "INT64")
    ids.set_data_from_numpy(np.array(users, dtype=np.int64), binary_data=False)
    k = triton.InferInput("k", [1], "INT64")
    k.set_data_from_numpy(np.array([5], dtype=np.int64), binary_data=False)
    wanted = [triton.InferRequestedOutput(n, binary_data=False) for n in ("items", "scores", "arm", "request_id")]
    result = c.infer("recs", [ids, k], outputs=wanted, headers=_auth(served), request_id="v2-batch")
    items, scores = result.as_numpy("items"), result.as_numpy("scores")
    assert items.shape == (4, 5) and scores.shape == (4, 5) and result.get_response()["id"] == "v2-batch"
    rids = [r.decode() if isinstance(r, bytes) else str(r) for r in result.as_numpy("request_id")]
    assert len(set(rids)) == 4  # one per user: feedback joins each list
    for row, user in enumerate(users):
        rest = served.post("recs", "/recommend", {"user_id": user, "k": 5}).json()
        assert items[row].tolist() == rest["items"], user
        assert np.allclose(scores[row], rest["scores"], atol=1e-5)
        assert result.as_numpy("arm")[row] in (rest["arm"], rest["arm"].encode())


def test_v2_requests_need_a_key_and_bad_ones_are_refused_with_a_reason(served):
    url = served.urls["recs"]
    body = {"inputs": [{"name": "user_id", "shape": [1], "datatype": "INT64", "data": [1]}]}
    assert served.client.post(f"{url}/v2/models/recs/infer", json=body).status_code == 401
    ok = served.client.post(f"{url}/v2/models/recs/infer", json=body, headers=_auth(served))
    assert ok.status_code == 200 and ok.json()["outputs"][0]["shape"] == [1, 10]
    bad = {
        "shape [2] does not match its 1 values": {"inputs": [{**body["inputs"][0], "shape": [2]}]},
        "unknown input 'age'": {"inputs": [{"name": "age", "shape": [1], "datatype": "INT64", "data": [3]}]},
        "must be INT64, not FP32": {"inputs": [{**body["inputs"][0], "datatype": "FP32"}]},
        "input 'user_id' (INT64, one per user) is required": {
            "inputs": [{"name": "k", "shape": [1], "datatype": "INT64", "data": [3]}]},
        "k: one value from 1 to 100": {"inputs": [body["inputs"][0],
                                                  {"name": "k", "shape": [1], "datatype": "INT64", "data": [0]}]},
        "unknown output 'embedding'": {**body, "outputs": [{"name": "embedding"}]},
        "invalid inference request": {"inputs": "user 1"},
    }
    for reason, request in bad.items():
        r = served.client.post(f"{url}/v2/models/recs/infer", json=request, headers=_auth(served))
        assert r.status_code == 400 and reason in r.json()["error"], (reason, r.text)
    other = served.client.post(f"{url}/v2/models/other/infer", json=body, headers=_auth(served))
    assert other.status_code == 404 and "this endpoint serves /v2/models/recs" in other.json()["error"]
