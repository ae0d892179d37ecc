"""/search and /suggest as the service computes them (aimass.serving._search), in-process over a small hand-made
index: how many suggestions past queries leave to titles, and a user's dislikes hidden as on /recommend."""
from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest

from aimass.serving import Engine, _search
from aimass.serving._online import Online
from aimass.serving._search import PastQueries, search, suggest
from aimass.settings import Settings
from aimass.zoo.search import Search, plain

TITLES = ["Night Owl", "Night Train", "Night Fever", "Nightcall", "Night Moves", "Nights", "Day Tripper", "Daylight"]
GENRES = ["rock", "rock", "disco", "synth", "rock", "pop", "rock", "pop"]
N = len(TITLES)


@pytest.fixture(scope="module")
def index() -> Search:
    # item i (dense, from 1) played N + 1 - i times: popularity follows the catalogue's order
    seqs = [np.array([i]) for i in range(1, N + 1) for _ in range(N + 1 - i)]
    return Search(semantic=False, mode="bm25").fit(seqs, N, item_table={
        "title": TITLES, "text": [f"{t} | {g}" for t, g in zip(TITLES, GENRES, strict=True)]})


@pytest.fixture
def engine(index, tmp_path):
    e = Engine.__new__(Engine)  # no registry: the facts search and suggest read
    e.item_ids = np.arange(100, 100 + N)  # raw ids differ from dense ids on purpose
    e.dense_of = {100 + i: i + 1 for i in range(N)}
    e.scorer = SimpleNamespace(estimator=index, dense=lambda raw: np.asarray(
        [e.dense_of[int(r)] for r in raw if int(r) in e.dense_of], dtype=np.int64))
    e.info = SimpleNamespace(name="catalogue", version=1, family="search")
    e.histories, e.columns = {}, {"genre": np.array(["", *GENRES])}
    e.online = Online("catalogue", Settings(home=tmp_path / "home"), e.dense_of, np.zeros(N + 1))
    yield e
    e.online.stop()


def _past(*asked: tuple[str, int]) -> PastQueries:
    past = PastQueries.__new__(PastQueries)  # no served-answer log, no refreshing thread: the table as read
    past.table = [(plain(q), q, n) for q, n in asked]
    return past


def _texts(out: dict) -> list[str]:
    return [s["text"] for s in out["suggestions"]]


def test_past_queries_equal_to_titles_leave_their_places_to_titles(engine):
    """Past queries that are the top titles themselves used to shrink the titles' share, then were dropped as
    duplicates: 3 suggestions for k=5 though 6 titles match."""
    out = suggest(engine, "night", 5, _past(("Night Owl", 9), ("night train", 8), ("NIGHT FEVER", 7)))
    assert _texts(out) == ["Night Owl", "Night Train", "Night Fever", "Nightcall", "Night Moves"]
    assert [s["item_id"] for s in out["suggestions"]] == [100, 101, 102, 103, 104]


def test_other_past_queries_still_take_up_to_half_the_places_after_the_titles(engine):
    out = suggest(engine, "night", 5, _past(("night owl", 9), ("night bus", 8), ("night shift", 7), ("night sky", 6)))
    assert _texts(out) == ["Night Owl", "Night Train", "Night Fever", "night bus", "night shift"]
    assert [s["item_id"] for s in out["suggestions"]][3:] == [None, None]
    # fewer titles than their share: past queries fill the rest, up to k
    out = suggest(engine, "day", 5, _past(("day tripper", 5), ("day one", 4), ("daydream", 3), ("days", 3)))
    assert _texts(out) == ["Day Tripper", "Daylight", "day one", "daydream", "days"]
    assert _texts(suggest(engine, "night", 4, None)) == TITLES[:4]


def _dislike(engine, user: int, item: int) -> None:
    engine.online.apply([(1, user, item, "dislike", None, time.time())], own=True)


def test_search_hides_what_the_user_disliked(engine):
    """A negative event hides the item from that user on /recommend; on /search too, with or without filters;
    other users, and no user, still get it."""
    _dislike(engine, 7, 100)  # "Night Owl"
    assert 100 not in search(engine, "night", 10, "bm25", 7, None)["items"]
    assert 100 not in search(engine, "night", 10, "bm25", 7, {"genre": ["rock"]})["items"]
    for user in (8, None):
        assert 100 in search(engine, "night", 10, "bm25", user, None)["items"]
        assert search(engine, "night", 10, "bm25", user, {"genre": ["rock"]})["items"] == [100, 101, 104]
    # no mask built (the index's own unfiltered path) for a request without filters from a user with no dislike
    assert _search._allowed(engine, None, None) is None and _search._allowed(engine, 8, None) is None


def test_suggest_hides_what_the_user_disliked(engine):
    _dislike(engine, 7, 100)
    assert "Night Owl" not in _texts(suggest(engine, "night", 5, None, user_id=7))
    assert _texts(suggest(engine, "night", 5, None, user_id=7)) == TITLES[1:6]
    assert _texts(suggest(engine, "night", 5, None, user_id=8)) == _texts(suggest(engine, "night", 5, None)) \
        == TITLES[:5]
