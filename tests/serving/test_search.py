"""The search endpoint on a real Ray Serve: a search index (family `search`) of the demo catalogue, trained
through Ray Train and registered like any model, answers POST /search and /suggest with the consumer key:
words, typos corrected and said so, filters, personalisation by a known user, clicks joined by request_id,
and bad input refused with a 4xx or answered sanely, never a 5xx."""
from __future__ import annotations

import time

import pytest

from aimass import datasets, events

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def catalogue(served):
    items = datasets.load("demo@v1", settings=served.settings).items
    return items.set_index("item_id")


def _search(served, **body):
    return served.post("search", "/search", body)


def test_a_query_finds_its_items_with_their_titles_and_lineage(served, catalogue):
    genre = catalogue["genre"].value_counts().index[0]  # a genre with many tracks
    r = _search(served, query=genre, k=10)
    assert r.status_code == 200, r.text
    a = r.json()
    assert (a["model"], a["version"], a["dataset"]) == ("catalogue", 1, "demo@v1") and a["request_id"]
    assert a["mode"] == "hybrid" and a["corrected"] is None and not a["personalised"]
    assert len(a["items"]) == 10 and len(a["titles"]) == 10 and a["scores"] == sorted(a["scores"], reverse=True)
    assert a["titles"] == [catalogue.loc[i, "title"] for i in a["items"]]
    assert set(catalogue.loc[a["items"][:5], "genre"]) == {genre}, a  # the best answers are of that genre
    for mode in ("bm25", "semantic"):
        m = _search(served, query=genre, k=5, mode=mode).json()
        assert m["mode"] == mode and len(m["items"]) == 5, m


def test_a_typo_is_corrected_and_said(served, catalogue):
    title = next(t for t in catalogue["title"] if len(t.split()[0]) >= 6)  # e.g. "Golden River"
    word = title.split()[0]
    typo = word[0] + word[2] + word[1] + word[3:]  # two letters swapped
    a = _search(served, query=f"{typo} {title.split()[1]}", k=10).json()
    assert a["corrected"] and word.lower() in a["corrected"].lower(), a
    assert title in a["titles"], a


def test_filters_keep_only_matching_items_and_an_unknown_column_is_404(served, catalogue):
    genre = catalogue["genre"].value_counts().index[-1]
    a = _search(served, query="night", k=10, filters={"genre": [genre]}).json()
    assert a["items"] and set(catalogue.loc[a["items"], "genre"]) == {genre}, a
    r = _search(served, query="night", filters={"colour": ["red"]})
    assert r.status_code == 404 and "unknown filter column 'colour'" in r.json()["error"], r.text


def test_a_known_user_gets_personalised_results_an_unknown_one_plain_results(served):
    plain = _search(served, query="summer", k=10).json()
    mine = _search(served, query="summer", k=10, user_id=1).json()
    assert mine["personalised"] and mine["history_length"] > 0, mine
    stranger = _search(served, query="summer", k=10, user_id=10**9).json()
    assert not stranger["personalised"] and stranger["history_length"] == 0
    assert stranger["items"] == plain["items"]


def test_suggestions_complete_a_prefix_with_titles_by_popularity(served, catalogue):
    title = catalogue["title"].iloc[0]
    r = served.post("search", "/suggest", {"prefix": title[:3].lower(), "k": 5})
    assert r.status_code == 200, r.text
    got = r.json()["suggestions"]
    assert 1 <= len(got) <= 5 and all(s["text"].lower().startswith(title[:3].lower()) for s in got), got
    assert all(s["item_id"] in catalogue.index for s in got if s["item_id"] is not None)


def test_a_known_users_suggestions_follow_their_history_an_unknown_users_do_not(served, catalogue):
    letter = catalogue["title"].str[0].str.lower().value_counts().index[0]  # the commonest first letter
    anon = served.post("search", "/suggest", {"prefix": letter, "k": 5}).json()
    assert not anon["personalised"] and anon["history_length"] == 0
    stranger = served.post("search", "/suggest", {"prefix": letter, "k": 5, "user_id": 10**9}).json()
    assert not stranger["personalised"] and stranger["suggestions"] == anon["suggestions"]
    lists = []
    for user in range(1, 6):
        mine = served.post("search", "/suggest", {"prefix": letter, "k": 5, "user_id": user}).json()
        assert mine["personalised"] and mine["history_length"] > 0, mine
        assert all(letter in s["text"].lower() for s in mine["suggestions"]), mine
        lists.append([s["text"] for s in mine["suggestions"]])
    assert any(got != [s["text"] for s in anon["suggestions"]] for got in lists), lists  # histories reorder


@pytest.mark.parametrize("body,status", [
    ({"query": ""}, 400),
    ({"query": "x" * 10_000}, 400),
    ({"query": "jazz", "k": 0}, 400),
    ({"query": "jazz", "k": 101}, 400),
    ({"query": "jazz", "mode": "fuzzy"}, 400),
    ({"query": "jazz", "user_id": "1"}, 400),
    ({"query": "   "}, 400),
    ({"query": "jazz", "mod": "bm25"}, 400),  # a misspelt field is refused, not ignored
    ({"query": "🎷🎺 jazz 🎶"}, 200),
    ({"query": "موسيقى الجاز"}, 200),  # right-to-left
    ({"query": "ja\u0301zz\u0308"}, 200),  # combining marks
    ({"query": "ja\x00zz\x1b[31m\x7f"}, 200),  # control characters (logged without them)
    ({"query": "x" * 1000}, 200),
])
def test_bad_input_is_a_clear_4xx_or_a_sane_answer(served, body, status):
    r = _search(served, **body)
    assert r.status_code == status, r.text
    if status == 200:
        assert isinstance(r.json()["items"], list)
    else:
        assert r.json()["error"], r.text


def test_routes_need_the_consumer_key(served):
    assert served.post("search", "/search", {"query": "jazz"}, key=None).status_code == 401
    assert served.post("search", "/suggest", {"prefix": "ja"}, key="revoked").status_code == 401


def test_a_click_on_a_result_joins_the_answer_that_showed_it(served):
    a = _search(served, query="rock", k=5).json()
    unjoined = events.stats("search", settings=served.settings)["unjoined_request_ids"]  # schemathesis' ids
    r = served.post("search", "/feedback", {"event_id": "search-click-1", "user_id": 1, "item_id": a["items"][0],
                                            "type": "click", "timestamp": time.time(),
                                            "request_id": a["request_id"]})
    assert r.status_code == 200 and r.json()["stored"] == 1, r.text
    log = events.ServedLog(served.settings)
    for _ in range(50):  # answers are logged off the request path
        f = log.frame("search")
        if a["request_id"] in set(f["request_id"]):
            break
        time.sleep(0.1)
    row = f[f["request_id"] == a["request_id"]].iloc[0]
    assert (row["route"], row["query"], row["items"]) == ("search", "rock", a["items"])
    assert events.stats("search", settings=served.settings)["unjoined_request_ids"] == unjoined  # this one joined


def test_past_queries_are_suggested_by_how_often_they_were_asked(served, tmp_path):
    """The replica's table of past queries, fed by the served-answer log (an endpoint of its own here)."""
    from aimass.serving._search import PastQueries

    log = events.ServedLog(served.settings)
    for q, users in (("Velvet Underground live", [1, 2, 3]), ("velvet underground live ", [4]),
                     ("velvet gold", [1, 2, 3]), ("velvet secret of one user", [5] * 9), ("nothing found", [1, 2, 3])):
        for u in users:
            log.record("past", "r", "search", "catalogue", 1, u, [], [] if q == "nothing found" else [1], [0.5],
                       "no_results" if q == "nothing found" else "model", query=q)
    log.flush()
    past = PastQueries(log, "past", interval=0.05, min_users=3)
    try:
        for _ in range(100):
            if past.table:
                break
            time.sleep(0.05)
        # asked by 4 users (3 + 1, case and spaces folded), by 3; one user's query, however often, never
        assert past.matching("VEL", 5) == [("velvet underground live", 4), ("velvet gold", 3)]
        assert past.matching("noth", 5) == []  # a query that found nothing is not suggested
    finally:
        past.stop()


def test_an_index_is_split_and_rolled_back_like_any_model(served):
    """Two versions of the index behind one endpoint, each user sticky to one arm; a rollback restores one."""
    from aimass import registry, serving
    from aimass.errors import InvalidInputError

    s = served.settings
    before = serving.traffic("search", settings=s).split
    # a recommender beside an index (or a shadow) would answer its users' every search with a 400: refused
    for arms, shadow in ((["catalogue/1=50", "recs/1=50"], None), (["catalogue/1=100"], "recs/1")):
        with pytest.raises(InvalidInputError, match=r"recs/1 is a 'itemknn' model and endpoint 'search' serves "
                                                    r"'search'"):
            serving.set_traffic("search", arms, shadow=shadow, settings=s)
    with pytest.raises(InvalidInputError, match=r"catalogue/1 is a 'search' model and endpoint 'recs' serves"):
        serving.set_traffic("recs", ["recs/1=50", "catalogue/1=50"], settings=s)
    assert serving.traffic("search", settings=s).split == before
    two = registry.register(registry.get("catalogue/1", settings=s).run_id, "catalogue", settings=s)
    serving.set_traffic("search", ["catalogue/1=50", f"{two.ref}=50"], settings=s)
    try:
        arms = {u: _search(served, query="summer", user_id=u).json()["arm"] for u in range(1, 41)}
        assert set(arms.values()) == {"catalogue/1", two.ref}, arms
        assert all(_search(served, query="night", user_id=u).json()["arm"] == arms[u] for u in range(1, 11))
    finally:
        back = serving.rollback("search", settings=s)
    assert [a["ref"] for a in back.arms] == ["catalogue/1"]
    assert {_search(served, query="summer", user_id=u).json()["arm"] for u in range(1, 11)} == {"catalogue/1"}


def test_the_consoles_search_page_shows_this_endpoints_queries(served, monkeypatch):
    """The operator console's Search page over this endpoint's real traffic (the other pages: tests/dashboards)."""
    from aimass import monitoring
    from tests.dashboards.test_app import open_console, page

    assert served.post("search", "/search", {"query": "zzqqxxjj", "mode": "bm25"}).json()["items"] == []
    for _ in range(100):  # answers are logged off the request path
        activity = monitoring.search_activity("search", settings=served.settings)
        if ("zzqqxxjj", 1) in activity.top_no_results:
            break
        time.sleep(0.1)
    assert activity.queries > 10 and ("zzqqxxjj", 1) in activity.top_no_results
    at = open_console(served.settings.home, monkeypatch)
    page(at, "pages/search.py")
    shown = {m.label: m.value for m in at.metric}
    assert shown["queries (7 days)"] == f"{activity.queries:,}" and shown["found nothing"] == f"{activity.no_results:,}"
    assert "zzqqxxjj" in at.dataframe[1].value["query"].tolist()
