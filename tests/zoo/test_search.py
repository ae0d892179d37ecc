"""The search family: the zoo contract, lexical/typo/suggestion/filter/personalisation behaviour on a small
hand-made catalogue, hostile input, and save/load without pickle."""
from __future__ import annotations

import numpy as np
import pytest

from aimass.errors import InvalidInputError
from aimass.zoo.contract import check_family
from aimass.zoo.search import Search

CATALOGUE = [  # (title, text)
    ("The Beatles", "The Beatles | rock, 60s, british, pop"),
    ("Beach House", "Beach House | dream pop, indie"),
    ("Beastie Boys", "Beastie Boys | hip hop, rap"),
    ("Beyoncé", "Beyoncé | rnb, pop, female vocalists"),
    ("Rammstein", "Rammstein | industrial metal, german"),
    ("Sigur Rós", "Sigur Rós | post-rock, icelandic, ambient"),
    ("Metallica", "Metallica | thrash metal, heavy metal"),
    ("Miles Davis", "Miles Davis | jazz, trumpet, cool jazz"),
    ("Amélie (2001)", "Amélie (2001) | film soundtrack, french"),
    ("Godspeed You! Black Emperor", "Godspeed You! Black Emperor | post-rock, instrumental"),
    ("Daft Punk", "Daft Punk | electronic, house, french"),
    ("宇多田ヒカル", "宇多田ヒカル | j-pop, japanese"),
]
N = len(CATALOGUE)
TABLE = {"title": [t for t, _ in CATALOGUE], "text": [x for _, x in CATALOGUE]}
# The Beatles most played; Metallica and Rammstein are listened to together
SEQS = [np.array([1, 2, 3]), np.array([1, 4]), np.array([1, 8]), np.array([1]), np.array([5, 7]),
        np.array([7, 5]), np.array([5, 7, 6]), np.array([2, 6, 10]), np.array([3, 11]),
        np.array([9, 10])]


@pytest.fixture(scope="module")
def lexical() -> Search:
    return Search(semantic=False, mode="bm25").fit(SEQS, N, item_table=TABLE)


def test_search_passes_the_contract():
    assert "save/load gives identical scores" in check_family(Search, {"semantic": False, "mode": "bm25"})


def test_a_word_finds_its_item(lexical):
    out = lexical.search("thrash", k=3)
    assert out["items"][0] == 7 and out["corrected"] is None and out["mode"] == "bm25"
    assert lexical.search("beyonce")["items"][0] == 4  # accents folded
    assert lexical.search("amelie 2001")["items"][0] == 9  # titles with years and punctuation
    assert lexical.search("宇多田")["items"][0] == 12  # no-space scripts matched by bigrams


@pytest.mark.parametrize("typo", ["Metalica", "Rammstien", "Godspede You Black Emperor", "Godspeed You Black Empreor",
                                  "Godspeed You Black Emperer"])
def test_typos_are_corrected(lexical, typo):
    out = lexical.search(typo, k=3)
    assert out["items"][0] == {"m": 7, "r": 5, "g": 10}[typo[0].lower()]
    assert out["corrected"] is not None


def test_did_you_mean_is_the_query_as_typed_with_only_the_misspelt_words_replaced(lexical):
    assert lexical.search("Godspede You! Black Emperor")["corrected"] == "Godspeed You! Black Emperor"
    assert lexical.search("宇多田 METALICA")["corrected"] == "宇多田 METALLICA"  # no bigrams, the typed case
    assert lexical.search("metalica_live")["corrected"] == "metallica_live"  # "_" splits words, as the index does


def test_two_edits_in_a_long_word(lexical):
    out = lexical.search("insturmentl", k=3)  # a transposition and a deletion in an 11-letter word
    assert out["items"][0] == 10 and out["corrected"] == "instrumental"
    assert lexical.search("Metllca")["corrected"] is None  # two edits in a 7-letter word are too many


def test_suggest_title_starts_first_then_word_starts_each_by_popularity(lexical):
    got = lexical.suggest("bea")
    # Beach House and Beastie Boys start with the prefix; The Beatles, the most played, matches a later word
    assert [g["text"] for g in got] == ["Beach House", "Beastie Boys", "The Beatles"] and got[2]["item"] == 1
    assert [g["text"] for g in lexical.suggest("the")] == ["The Beatles"]
    assert lexical.suggest("BEY")[0]["text"] == "Beyoncé" and lexical.suggest("sigur ro")[0]["item"] == 6
    with pytest.raises(InvalidInputError):
        lexical.suggest("  ")


def test_a_history_moves_up_the_titles_it_goes_with_and_leaves_the_others_in_order(lexical):
    assert [g["item"] for g in lexical.suggest("bea", k=3)] == [2, 3, 1]  # title starts first, by popularity
    # Beastie Boys' listeners also play Daft Punk; with no co-occurrence the others keep their order
    assert [g["item"] for g in lexical.suggest("bea", k=3, history=np.array([11]))] == [3, 2, 1]
    # a history that goes with none of them changes nothing (the popular Beatles stay behind the title starts)
    assert lexical.suggest("bea", history=np.array([12])) == lexical.suggest("bea")
    assert lexical.suggest("bea", history=np.array([], dtype=np.int64)) == lexical.suggest("bea")


def test_suggestions_keep_to_the_allowed_items(lexical):
    """The mask serving builds from a user's dislikes: a hidden title is not suggested, the others keep their
    order."""
    ok = np.ones(N + 1, dtype=bool)
    ok[[0, 2]] = False
    assert [g["item"] for g in lexical.suggest("bea", k=3, allowed=ok)] == [3, 1]
    with pytest.raises(InvalidInputError, match="mask of 13 booleans"):
        lexical.suggest("bea", allowed=np.ones(5, dtype=bool))


def test_filters(lexical):
    allowed = np.zeros(N + 1, bool)
    allowed[[5, 6]] = True
    out = lexical.search("metal", k=10, allowed=allowed)
    assert out["items"].tolist() == [5]


def test_personalised_ranking_moves_the_neighbour_up(lexical):
    plain = lexical.search("post rock", k=5)
    assert plain["items"][:2].tolist() == [6, 10] and not plain["personalised"]
    mine = lexical.search("post rock", k=5, history=np.array([9]))  # Amélie's listeners also play Godspeed
    assert mine["personalised"] and mine["items"][0] == 10
    assert set(mine["items"]) == set(plain["items"])  # re-ranked, nothing off-query added
    # a history that goes with none of the results says nothing: the plain ranking, not called personalised
    unrelated = lexical.search("post rock", k=5, history=np.array([12]))
    assert not unrelated["personalised"] and unrelated["items"].tolist() == plain["items"].tolist()


def test_without_vectors_the_default_mode_is_bm25():
    out = Search(semantic=False).fit(SEQS, N, item_table=TABLE).search("metal")
    assert out["mode"] == "bm25" and 7 in out["items"].tolist()
    with pytest.raises(Exception, match="needs semantic=True"):
        Search(semantic=False, mode="hybrid").fit(SEQS, N, item_table=TABLE)


@pytest.mark.parametrize("query", ["🎸🔥", "مرحبا بالعالم", "e\u0301\u0301\u0301", "\x00\x07\x1b[31m", "metal " * 1700,
                                   "\u202eatem", "a", "'; DROP TABLE items; --"])
def test_odd_input_never_raises(lexical, query):
    out = lexical.search(query)
    assert isinstance(out["items"], np.ndarray) and len(out["items"]) == len(out["scores"]) <= 10
    assert isinstance(lexical.suggest(query), list)


@pytest.mark.parametrize("kwargs", [{"query": ""}, {"query": " \t\n"}, {"query": "metal", "k": 0},
                                    {"query": "metal", "mode": "vector"}, {"query": "metal", "mode": "semantic"}])
def test_bad_input_is_refused(lexical, kwargs):
    with pytest.raises(InvalidInputError):
        lexical.search(**kwargs)


def test_save_load_identical_without_pickle(lexical, tmp_path):
    lexical.save(tmp_path / "m")
    assert not list(tmp_path.rglob("*.pkl")) and not list(tmp_path.rglob("*.pickle"))
    loaded = Search.load(tmp_path / "m")
    for q in ["metal", "Metalica", "post rock"]:
        a, b = lexical.search(q, history=np.array([1])), loaded.search(q, history=np.array([1]))
        np.testing.assert_array_equal(a["items"], b["items"])
        np.testing.assert_allclose(a["scores"], b["scores"])
    assert loaded.suggest("bea") == lexical.suggest("bea")
    # saved before bm25 became the default mode of an index without vectors: it still loads and answers
    import json

    config = tmp_path / "m" / "config.json"
    config.write_text(json.dumps({**(meta := json.loads(config.read_text())),
                                  "config": {**meta["config"], "mode": "hybrid"}}))
    assert Search.load(tmp_path / "m").search("metal")["mode"] == "bm25"


def test_semantic_and_hybrid(tmp_path):
    """One small MiniLM case: a word the text does not contain is found by meaning; ANN matches exact."""
    est = Search(ann_min_items=0).fit(SEQS, N, item_table=TABLE)  # ANN even at 12 items
    exact = Search(ann_min_items=10**6).fit(SEQS, N, item_table=TABLE)
    assert 7 in est.search("loud guitars headbanging", k=3, mode="semantic")["items"][:3]
    assert est.search("metallica", mode="hybrid")["items"][0] == 7
    assert set(est.search("jazz trumpet", k=3, mode="semantic")["items"]) == \
        set(exact.search("jazz trumpet", k=3, mode="semantic")["items"])
    est.save(tmp_path / "m")
    loaded = Search.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.search("jazz")["items"], est.search("jazz")["items"])
    for query in ("???", "🎬", "\u0301"):  # no word: MiniLM still gave k popular items, logged as answers
        assert est.search(query, mode="hybrid")["items"].size == 0
    # a batch is scored at once: each row is still its user's taste (co-occurrence and vectors) plus the prior
    hs = [np.array([1, 2]), np.array([], np.int64), np.array([5, 7, 7, 99, 0]), np.arange(1, N + 1)]
    assert exact._cfg.content_weight > 0
    for row, h in zip(exact.score(hs), hs, strict=True):
        assert row[0] == -np.inf
        np.testing.assert_allclose(row[1:], exact._taste(h) + 1e-3 * exact._pop, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(exact.score([hs[0], hs[3]]), exact.score(hs)[[0, 3]], rtol=1e-6)  # none empty


def test_scripts_without_spaces_match_by_characters_and_pairs_and_keep_latin_words_whole():
    """Chinese and Japanese are written without spaces: a one-character query ("猫", cat) must find its titles,
    a Latin word inside such a title stays one word, a voiced kana is another letter, and a Hangul syllable is
    not taken apart into its jamo."""
    from aimass.zoo.search import words

    titles = ["黒い猫", "iPhone手机壳", "ガラスの心", "カラスの歌", "방탄소년단", "Daft Punk"]
    idx = Search(semantic=False, mode="bm25").fit([np.array([1, 2, 3, 4, 5, 6])], len(titles),
                                                 item_table={"title": titles, "text": titles})
    assert idx.search("猫")["items"][0] == 1
    assert idx.search("iphone")["items"][0] == 2 and "iphone" in words("iPhone手机壳")
    assert idx.search("ガラス")["items"][0] == 3 and idx.search("カラス")["items"][0] == 4
    assert words("ガラス") != words("カラス") and words("ｶﾞﾗｽ") == words("ガラス")  # half-width kana too
    assert idx.search("소년")["items"][0] == 5 and "소년" in words("방탄소년단")
    assert [s["text"] for s in idx.suggest("방탄")] == ["방탄소년단"]


def test_words_keep_their_vowel_signs_and_thai_matches_inside_a_title():
    """Hindi's vowel signs are marks, which Python's \\w leaves out: "दुनिया" (world) was indexed as द, न, य,
    so "पानी" (water) shared a fragment with it. Thai has no spaces: a word inside a title must match."""
    from aimass.zoo.search import words

    assert words("दुनिया") == ["दुनिया"] and words("पानी") == ["पानी"]
    titles = ["दुनिया", "पानी", "माया", "ไปไหนมา", "เพลงรัก", "Daft Punk"]
    idx = Search(semantic=False, mode="bm25").fit([np.array([1, 2, 3, 4, 5, 6])], len(titles),
                                                 item_table={"title": titles, "text": titles})
    assert idx.search("दुनिया")["items"].tolist() == [1]  # nothing else shares a word with it
    assert idx.search("ไหน")["items"][0] == 4 and idx.search("รัก")["items"][0] == 5
    assert [s["text"] for s in idx.suggest("दु")] == ["दुनिया"] and not idx.suggest("न")
    # marks that are letters are kept (Thai vowels and tones, Devanagari's virama); accents of Latin are not
    assert words("ปู") == ["ปู"] and words("ข้าว") != words("ขาว") and words("पक्का") != words("पकका")
    assert words("Beyoncé") == ["beyonce"] and words("❤️ love") == ["love"]  # an emoji's selector is no word



def test_other_scripts_long_queries_letters_without_decomposition_and_mixed_words():
    """A Korean query's later words count (a cap on tokens took them: a no-space word gives two a character);
    Hindi words get their typos corrected (vowel signs are marks, not isalpha); ø, ł and ı fold like accents;
    a word mixing scripts gets its Latin run respelt; zero-width characters alone match nothing."""
    from aimass.zoo.search import words

    titles = ["방탄소년단", "라이브 무대", "दुनिया के गाने", "Łódź Kaliska", "Mø", "iPhone手机壳", "Daft Punk"]
    idx = Search(semantic=False, mode="bm25").fit([np.arange(1, len(titles) + 1)], len(titles),
                                                 item_table={"title": titles, "text": titles})
    assert 2 in idx.search("방탄소년단 다이너마이트 공식 뮤직비디오 라이브 무대 영상")["items"].tolist()
    out = idx.search("दुनीया", mode="bm25")
    assert out["items"].tolist()[:1] == [3] and out["corrected"] == "दुनिया"
    assert words("Łódź") == words("lodz") and words("Işık") == ["isik"]
    assert idx.search("lodz")["items"][0] == 4 and idx.search("mo")["items"][0] == 5
    assert idx.search("iPhonne手机壳")["corrected"].casefold() == "iphone手机壳"
    assert len(idx.search("\u200b\u200b")["items"]) == 0


def test_a_filtered_fuzzy_match_is_cut_after_the_filter():
    """Over a hundred titles near a misspelt query: the allowed ones must still come through."""
    titles = [f"Love {'x' * (i % 3)}" for i in range(150)] + ["Love jazz"]
    genre = ["pop"] * 150 + ["jazz"]
    idx = Search(semantic=False, mode="bm25", candidates=100).fit(
        [np.arange(1, len(titles) + 1)], len(titles), item_table={"title": titles, "text": titles, "genre": genre})
    allowed = np.zeros(len(titles) + 1, bool)
    allowed[151] = True
    assert idx.search("lovee", allowed=allowed)["items"].tolist() == [151]


def test_suggest_says_whether_the_history_moved_the_titles(lexical):
    with_history = lexical.suggest("metal", history=np.array([5]))
    assert with_history and all(s["personal"] for s in with_history)
    assert not any(s["personal"] for s in lexical.suggest("metal"))


def test_words_written_with_punctuation_inside_are_found_as_people_type_them():
    """"M*A*S*H", "Spider-Man", "Ocean's Eleven": typed "mash", "spiderman", "oceans eleven" they found nothing,
    and a possessive's "s" was a word that matched every other "'s" title."""
    titles = ["M*A*S*H (1970)", "Spider-Man (2002)", "Ocean's Eleven (2001)", "Schindler's List (1993)",
              "Mash Potato Blues", "Man on Fire", "S.H.I.E.L.D."]
    seqs = [np.array([1, 6]), np.array([1]), np.array([6]), np.array([3, 4])]
    est = Search(semantic=False, mode="bm25").fit(seqs, len(titles), item_table={"title": titles, "text": titles})

    def first(q: str) -> str:
        return titles[est.search(q, 3)["items"][0] - 1]

    for query, title in [("mash", "M*A*S*H (1970)"), ("spiderman", "Spider-Man (2002)"), ("shield", "S.H.I.E.L.D."),
                         ("oceans eleven", "Ocean's Eleven (2001)"), ("schindlers list", "Schindler's List (1993)"),
                         ("spider man", "Spider-Man (2002)"), ("ocean's eleven", "Ocean's Eleven (2001)")]:
        assert first(query) == title, query
    assert titles.index("Schindler's List (1993)") + 1 not in est.search("oceans", 5)["items"]
    assert [s["text"] for s in est.suggest("mas", 2)] == ["M*A*S*H (1970)", "Mash Potato Blues"]  # a title start
    assert [s["text"] for s in est.suggest("spiderm")] == ["Spider-Man (2002)"]
    assert [s["text"] for s in est.suggest("schindlers")] == ["Schindler's List (1993)"]


def test_did_you_mean_spells_the_correction_as_the_catalogue_does():
    """The correction came from the folded vocabulary: "Bjrök" became "Bjork", "Strase" "Strasse"."""
    titles = ["Björk", "Die Ärzte", "Straße der Lieder", "Dvořák Symphonies", "Metallica"]
    est = Search(semantic=False, mode="bm25").fit([np.array([1, 2])], len(titles),
                                                  item_table={"title": titles, "text": titles})
    for typed, shown in [("Bjrök", "Björk"), ("bjrok", "björk"), ("ÄRTZE", "ÄRZTE"), ("Strase", "Straße"),
                         ("Dvorjak", "Dvořák"), ("Metalica", "Metallica")]:
        assert est.search(typed)["corrected"] == shown, typed


def test_a_title_typed_whole_comes_before_popular_partial_matches():
    """Popularity is fused at BM25's weight: a popular item matching one word ("the", "2001") tied with or beat
    the title the query named, and a tie went to the lower item id."""
    titles = ["Star Wars: Episode V (1980)", "Star Wars: Episode IV (1977)", "The Who", "The Beatles",
              "Ocean's Eleven (2001)", "2001: A Space Odyssey (1968)"]
    plays = {1: 50, 2: 10, 3: 50, 4: 10, 5: 50, 6: 10}
    seqs = [np.array([i]) for i, n in plays.items() for _ in range(n)]
    est = Search(semantic=False, mode="bm25").fit(seqs, len(titles), item_table={"title": titles, "text": titles})
    for query, title in [("the beatles", "The Beatles"), ("2001: A Space Odyssey", "2001: A Space Odyssey (1968)"),
                         ("star wars episode iv 1977", "Star Wars: Episode IV (1977)"),
                         ("2001 space odyssey", "2001: A Space Odyssey (1968)")]:  # the last: a tie, to BM25
        got = est.search(query, 3)
        assert titles[got["items"][0] - 1] == title, (query, [titles[i - 1] for i in got["items"]])
        assert np.all(np.diff(got["scores"]) <= 0)
    allowed = np.ones(len(titles) + 1, bool)
    allowed[4] = False  # a filter that leaves the named title out leaves it out
    assert 4 not in est.search("the beatles", 3, allowed=allowed)["items"]


def test_joined_words_keep_to_letters_and_a_title_typed_without_its_punctuation_is_named():
    """Joins made numbers of version strings ("3.0" found by "30"), doubled every character of a no-space title
    with inner punctuation, and a title typed without its apostrophe lost to popular partial matches."""
    from aimass.zoo.search import words

    titles = ["USB 3.0 Hub", "30 Seconds to Mars", "東京-大阪 夜行バス", "京大 入試案内", "Murphy's Romance (1985)",
              "Romance (1999)", "Terror", "Terror 2000", "Heat (1995)"]
    seqs = [np.array([1, 3, 6])] * 5 + [np.array([4, 8])]
    est = Search(semantic=False, mode="bm25").fit(seqs, len(titles), item_table={"title": titles, "text": titles})

    def top(q: str) -> list[str]:
        return [titles[i - 1] for i in est.search(q, 3)["items"]]

    assert top("30") == ["30 Seconds to Mars"] and "30" not in words("USB 3.0 Hub")
    assert words("東京-大阪") == ["東", "京", "東京", "大", "阪", "大阪"]
    assert top("murphys romance")[0] == "Murphy's Romance (1985)"
    assert top("terror")[0] == "Terror" and top("heat")[0] == "Heat (1995)"
