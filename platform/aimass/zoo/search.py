"""Search: a query (and, optionally, who asks) to a ranked list of catalogue items.

Why this shape (figures from benchmarks/search_lastfm.py):
- BM25 and MiniLM fail differently (names and rare words vs. meaning), so hybrid search fuses them the way
  Elasticsearch, OpenSearch and Vespa do, by reciprocal rank (k = 60): ranks need no score calibration, so it
  carries over to catalogues never seen. Candidates are the union of both lists, and every signal then ranks
  every candidate, so a lexical match the vector list missed still gets its semantic vote; on Last.fm tag
  queries this beat list-only fusion and the normalised linear mix. The semantic vote weighs 1/4 of BM25's:
  MiniLM alone is the weaker ranker, and at equal weight it dragged the fused list below BM25 alone.
- Popularity and the user's own recommender signal (``score``: co-occurrence neighbours + content similarity)
  are two more fused ranks, over the candidates only: they reorder what matches the query, never add to it.
- Text is folded (NFKD, accents stripped, casefolded) and split on unicode word characters, so "Beyoncé"
  meets "beyonce" and film titles' years and punctuation become plain tokens; scripts written without
  spaces (CJK) are indexed as character bigrams. No stemming (measured: no gain, and it mangles non-English
  names). BM25 has no length normalisation (b = 0): item texts are short field lists, where a longer text
  means a better-described item, not a diluted one.
- Typos: a token unknown to the index is corrected against its vocabulary (Meilisearch's rule: 1 edit from
  5 letters, 2 from 9, a transposition is one edit), the most frequent of the closest words winning; and the
  whole query is matched fuzzily against titles, since a misspelt name may land on another real word.
- Item vectors are stored int8 with one scale per vector (4x smaller); below ``ann_min_items`` an exact dot
  product (0.2 ms for 20k items) beats an HNSW index, above it usearch's HNSW takes over.
- Saved as json + npz (+ usearch's own file), never pickled; the lexical index is rebuilt from the stored
  texts on load (about a second for 20k items), so it has one code path.
"""
from __future__ import annotations

import json
import threading
import unicodedata
from collections import OrderedDict
from pathlib import Path
from typing import Literal

import numpy as np
import regex
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field, model_validator

from aimass.errors import InvalidInputError
from aimass.zoo import Seed
from aimass.zoo.text import query_encoder


class SearchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: Seed = 0  # nothing here is random except the ANN graph, built single-threaded for repeatability
    mode: Literal["bm25", "semantic", "hybrid"] = Field("hybrid", description="Default retrieval mode")
    semantic: bool = Field(True, description="False: no MiniLM at all (BM25, typos and suggestions only)")
    vectors: Literal["int8", "float32"] = Field("int8", description="How item vectors are stored")
    ann_min_items: int = Field(100_000, ge=0, description="Exact dot product below this catalogue size, "
                               "HNSW (usearch) at or above it")
    fusion: Literal["rrf", "linear"] = Field("rrf", description="How candidate lists are fused")
    rrf_k: int = Field(60, ge=1, description="Reciprocal rank fusion constant: 1 / (k + rank)")
    semantic_weight: float = Field(0.25, ge=0, description="Weight of the semantic list in fusion (BM25 is 1)")
    candidates: int = Field(100, ge=10, le=10_000, description="Candidates each source contributes")
    popularity_weight: float = Field(1.0, ge=0, description="Weight of the popularity list in fusion")
    personal_weight: float = Field(1.0, ge=0, description="Weight of the user's score() among the candidates")
    bm25_k1: float = Field(1.2, gt=0, description="BM25 term-frequency saturation")
    bm25_b: float = Field(0.0, ge=0, le=1, description="BM25 document-length normalisation")
    stem: bool = Field(False, description="English Snowball stemming of ASCII tokens")
    title_boost: int = Field(1, ge=1, le=5, description="Copies of the title's tokens added to its document")
    typo_min_1: int = Field(5, ge=2, description="Shortest token corrected with one edit")
    typo_min_2: int = Field(9, ge=3, description="Shortest token corrected with two edits")
    title_start_bonus: float = Field(1.0, ge=0, description="Suggestion bonus when the whole title starts with "
                                     "the prefix (popularity is in [0, 1]: 1 ranks every such title first)")
    fuzzy_cutoff: float = Field(80.0, ge=0, le=100, description="Least rapidfuzz ratio of a whole-title match")
    window: int = Field(20, ge=1, description="Positions apart that still count as co-occurring (score())")
    neighbors: int = Field(100, ge=1, description="Co-occurrence neighbours kept per item (score())")
    content_weight: float = Field(0.1, ge=0, description="Weight of history-to-item vector similarity (score())")
    bf16: bool = Field(True, description="Run MiniLM under bfloat16 autocast where the CPU has native bf16: "
                       "~4x faster item encoding, cosine to float32 > 0.9999 (measured)")
    query_cache: int = Field(4096, ge=0, description="Query vectors kept in an LRU cache (0: none)")

    @model_validator(mode="after")
    def _mode_needs_vectors(self) -> SearchConfig:
        # without MiniLM the default mode is BM25: an index whose every default request failed would serve nothing
        if not self.semantic and self.mode != "bm25":
            if "mode" in self.model_fields_set:
                raise ValueError(f"mode {self.mode!r} needs semantic=True (without MiniLM only bm25 searches)")
            self.mode = "bm25"
        return self


# A word is letters, digits and the marks that belong to them: Python's \w leaves out vowel signs (Unicode's
# M categories), which cut every Hindi or Thai word into one-consonant fragments ("दुनिया" into द, न, य).
_WORD = regex.compile(r"(?:[\p{L}\p{N}]\p{M}*)+")  # a mark alone (an emoji's variation selector) is no word
_LETTERS = _WORD  # a word as words() splits it ("_" separates too)
_ALPHA = regex.compile(r"[\p{L}\p{M}]+")  # a word typos are corrected in: letters with their vowel signs
# Scripts written without spaces: Thai, Lao, Myanmar, Khmer, and CJK, kana, hangul and above
_NO_SPACE = "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u2e80-\U0010ffff"
_RUNS = regex.compile(f"[{_NO_SPACE}]+|[^{_NO_SPACE}]+")  # a word's no-space runs and the rest
_IN_NO_SPACE = regex.compile(f"[{_NO_SPACE}]")
_MARKED = regex.compile(r"[\p{Devanagari}\p{Bengali}\p{Gurmukhi}\p{Gujarati}\p{Oriya}\p{Tamil}\p{Telugu}\p{Kannada}"
                        r"\p{Malayalam}\p{Sinhala}\p{Thai}\p{Lao}\p{Tibetan}\p{Myanmar}\p{Khmer}\p{Balinese}"
                        r"\p{Javanese}]")  # scripts whose combining marks are letters (vowel signs, tones, viramas)
_KANA_VOICING = "\u3099\u309a"  # combining marks that make another kana: ガラス (glass) is not カラス (crow)
# Latin letters that carry their stroke or ligature in the letter itself, so NFKD leaves them whole: folded as a
# person without the key types them ("Łódź" as "lodz", "Mø" as "mo", "Işık" as "isik")
_UNDECOMPOSED = str.maketrans({"ø": "o", "ł": "l", "đ": "d", "ħ": "h", "ı": "i", "æ": "ae", "œ": "oe",
                               "þ": "th", "ŧ": "t", "ƀ": "b", "ɨ": "i"})
# Words written with punctuation inside ("M*A*S*H", "Spider-Man", "S.H.I.E.L.D.", "Ocean's") are also indexed,
# and matched, as one word, as people type them ("mash", "spiderman", "shield", "oceans"); a possessive's "s" is no
# word of its own (it matched every "'s" title)
_INNER = "-*·.'’‐"
# (the lookbehind and possessive quantifiers keep a search linear: retried at every position of a long word, it
# took 11 s on a 16,000-character token)
_JOINED = regex.compile(rf"(?<![\p{{L}}\p{{N}}\p{{M}}])(?:[\p{{L}}\p{{N}}]\p{{M}}*+)++"
                        rf"(?:[{_INNER}](?:[\p{{L}}\p{{N}}]\p{{M}}*+)++)+")
# punctuation between two digits is kept: "3.0", "1-900" and "08.15.03" are numbers, not "30" or "1900"
_INNER_CUT = regex.compile(rf"(?<!\d)[{_INNER}]|[{_INNER}](?!\d)")
_POSSESSIVE = regex.compile(r"(?<=[\p{L}\p{N}\p{M}])['’]s\b")
_YEAR = regex.compile(r"\s*\((?:1[89]|2[01])\d\d\)\s*$")  # "Heat (1995)": the year a film title ends in
_MAX_QUERY_CHARS = 1000
_MAX_TITLE = 100  # a 10 kB query is a paste accident; its head is what the user meant


def fold(text: str) -> str:
    """Accent-, case- and width-insensitive form used for every match. Composed again after the accents go:
    a Hangul syllable stays one character (decomposed, it is three jamo), a voiced kana stays voiced. Marks are
    accents to drop only where they are optional (Latin, Greek, Cyrillic, Hebrew, Arabic...): in the scripts
    whose marks are vowels, tones and viramas (Devanagari, Thai, Khmer...) they are letters, and stay
    ("ปู" is not "ป", "ข้าว" is not "ขาว")."""
    text = unicodedata.normalize("NFKD", str(text))
    if text.isascii():
        return text.casefold()
    kept, keep_marks = [], False
    for c in text:
        if unicodedata.combining(c) and c not in _KANA_VOICING:
            if not keep_marks:
                continue
        else:
            keep_marks = _MARKED.match(c) is not None
        kept.append(c)
    return unicodedata.normalize("NFC", "".join(kept)).casefold().translate(_UNDECOMPOSED)


def words(text: str) -> list[str]:
    """Index and query tokens. Scripts written without spaces (CJK, kana, hangul, Thai, Lao, Myanmar, Khmer)
    give each character (with its marks) and each
    pair of neighbours (a one-character query is common there, and a pair carries most of the meaning); a
    Latin or digit run inside such a word stays whole ("iphone手机壳": "iphone", "手", ..., "手机", ...)."""
    out = []
    text = str(text)
    folded = _folded_words(_POSSESSIVE.sub("", text))
    if _JOINED.search(text):
        once = set(folded)
        # not in scripts written without spaces: their words are characters and pairs already ("東京-大阪")
        folded += [w for w in dict.fromkeys(_folded_words(joined(text))) if w not in once
                   and not _IN_NO_SPACE.search(w)]
    for w in folded:
        if not _IN_NO_SPACE.search(w):
            out.append(w)
            continue
        for run in _RUNS.findall(w):
            if not _IN_NO_SPACE.match(run):
                out.append(run)
            else:  # by letter with its marks (a Thai consonant and its vowel sign are one), and by pairs
                units = regex.findall(r"\X", run)
                out += units + ["".join(units[i:i + 2]) for i in range(len(units) - 1)]
    return out


def joined(text: str) -> str:
    """`text` with the punctuation inside its words taken out ("M*A*S*H" -> "MASH")."""
    return _JOINED.sub(lambda m: _INNER_CUT.sub("", m.group()), str(text))


def plain(text: str) -> str:
    """Folded words in their order, one space apart, no pairs or single characters: what a whole title or a
    prefix is matched as (suggestions, fuzzy titles), so "방탄" starts "방탄소년단"."""
    return " ".join(_folded_words(text))


def _folded_words(text: str) -> list[str]:
    return _WORD.findall(fold(text).replace("_", " "))  # "_" separates words too


def _spellings(titles: list[str]) -> dict[str, str]:
    """Folded word -> its most frequent spelling among the titles, lower case ("bjork" -> "björk", "strasse" ->
    "straße"; "pokemon" stays when most titles spell it so): what "did you mean" shows. Only for the words
    some title spells with accents or letters that folding changes."""
    seen: dict[str, dict[str, int]] = {}
    for title in titles:
        for w in _WORD.findall(unicodedata.normalize("NFC", str(title)).replace("_", " ")):
            low = w.lower().replace("i\u0307", "i")  # "İ".lower() is "i" with a combining dot
            counts = seen.setdefault(fold(w), {})
            counts[low] = counts.get(low, 0) + 1
    best = {f: max(c, key=lambda s: (c[s], s)) for f, c in seen.items() if len(c) > 1 or f not in c}
    return {f: s for f, s in best.items() if s != f}


def _respelt(word: str, fixes: dict[str, str]) -> str:
    """`word` as typed, or its correction in the typed word's case (METALICA -> METALLICA, Metalica ->
    Metallica)."""
    fix = fixes.get(fold(word))
    if fix is None:
        return word
    if word.isupper() and len(word) > 1:
        return fix.upper()
    if word[:1].isupper():
        return fix[:1].upper() + fix[1:]
    return fix


def _respelt_runs(word: str, fixes: dict[str, str]) -> str:
    """`word` with each of its runs respelt: a word that mixes scripts ("iPhonne手机壳") was corrected by runs."""
    if not _IN_NO_SPACE.search(word):
        return _respelt(word, fixes)
    return "".join(r if _IN_NO_SPACE.match(r) else _respelt(r, fixes) for r in _RUNS.findall(word))


def title_of(row: dict, text: str) -> str:
    """The display name of an item: its title/name column, else its text up to ' | ' (the demo's and Last.fm's
    field separator), at most 100 characters: suggestions index every word suffix of it."""
    for key in ("title", "name"):
        if isinstance(row.get(key), str) and row[key].strip():  # a missing value (None, NaN) falls through
            return row[key][:_MAX_TITLE]
    return text.split(" | ", 1)[0][:_MAX_TITLE]


class Search:
    family = "search"
    Config = SearchConfig
    is_torch = False
    accepts_item_features = True
    accepts_item_table = True

    def __init__(self, **params):
        self.params = params

    def get_params(self, deep: bool = True) -> dict:
        return dict(self.params)

    # -- additive statistics ------------------------------------------------------------------------------

    def resolve_config(self, n_items: int, sequence_lengths, time_budget_s: float | None = None) -> SearchConfig:
        return SearchConfig(**self.params)

    def sufficient_stats(self, sequences: list[np.ndarray], cfg: SearchConfig, n_items: int) -> dict:
        n = n_items + 1
        counts = np.zeros(n)
        rows, cols, vals = [], [], []
        for s in sequences:
            s = np.asarray(s, dtype=np.int64)
            np.add.at(counts, s, 1.0)
            for d in range(1, min(cfg.window, len(s) - 1) + 1):
                rows.append(s[:-d])
                cols.append(s[d:])
                vals.append(np.full(len(s) - d, 1.0 / d))
        rows, cols, vals = (np.concatenate(x) if x else np.zeros(0, int) for x in (rows, cols, vals))
        return {"counts": counts, "co": sp.coo_matrix((vals, (rows, cols)), shape=(n, n)).tocsr()}

    def adopt_stats(self, stats: dict, cfg: SearchConfig, n_items: int, item_table: dict | None = None,
                    item_features: np.ndarray | None = None) -> Search:
        self.config_, self.n_items_ = cfg, n_items
        self.counts_ = np.asarray(stats["counts"], dtype=np.float64).copy()
        self.counts_[0] = 0.0
        # co-occurrence both ways, cosine-normalised so popular items do not neighbour everything
        co = sp.csr_matrix(stats["co"], dtype=np.float64)
        co = co + co.T
        norm = sp.diags(1.0 / np.sqrt(np.maximum(self.counts_, 1.0)))
        sim = (norm @ co @ norm).tocsr()
        sim.setdiag(0)
        sim.eliminate_zeros()
        self.similarity_ = _top_k_rows(sim, cfg.neighbors).astype(np.float32)

        table = item_table or {}
        texts = [str(t) for t in table.get("text", [f"item {i}" for i in range(1, n_items + 1)])]
        if len(texts) != n_items:
            raise InvalidInputError(f"item_table has {len(texts)} texts for {n_items} items")
        cols = {k: v for k, v in table.items() if k in ("title", "name") and len(v) == n_items}
        self.texts_ = texts
        self.titles_ = [title_of({k: v[i] for k, v in cols.items()}, t) for i, t in enumerate(texts)]

        self.vectors_, self.scales_ = None, None
        if cfg.semantic:
            feats = item_features
            if feats is None:
                from aimass.zoo.text import item_text_features

                feats = item_text_features(texts, batch_size=128, bf16=cfg.bf16)
            feats = np.asarray(feats, dtype=np.float32)[1:]
            if cfg.vectors == "int8":
                scale = np.abs(feats).max(axis=1) / 127.0
                scale[scale == 0] = 1.0
                self.vectors_ = np.round(feats / scale[:, None]).astype(np.int8)
                self.scales_ = scale.astype(np.float32)
            else:
                self.vectors_, self.scales_ = feats, np.ones(len(feats), np.float32)
        return self._build()

    def fit(self, sequences: list[np.ndarray], n_items: int, *, valid=None, item_features=None, item_table=None,
            progress: bool = False) -> Search:
        self.Config(**self.params)  # bad params are refused before the data is read
        cfg = self.resolve_config(n_items, [len(s) for s in sequences])
        return self.adopt_stats(self.sufficient_stats(sequences, cfg, n_items), cfg, n_items,
                                item_table=item_table, item_features=item_features)

    def _build(self, ann=None) -> Search:
        """Everything derived from the learned state: lexical index, vocabulary, suggestions, dense vectors."""
        import bm25s

        cfg = self._cfg = self.config_
        self._stemmer = None
        if cfg.stem:
            import Stemmer

            self._stemmer = Stemmer.Stemmer("english")
        docs = [self._terms(words(title) * cfg.title_boost + words(text))
                for title, text in zip(self.titles_, self.texts_, strict=True)]
        bm25 = bm25s.BM25(k1=cfg.bm25_k1, b=cfg.bm25_b)
        bm25.index([d or [""] for d in docs], show_progress=False)
        # bm25s's eager per-term score lists, summed with bincount: several times faster than its np.add.at
        self._term_ids, sc = bm25.vocab_dict, bm25.scores
        self._bm25_data, self._bm25_indices, self._bm25_indptr = sc["data"], sc["indices"], sc["indptr"]
        # typo vocabulary: surface words with their document frequency, the frequent first on ties
        df: dict[str, int] = {}
        for title, text in zip(self.titles_, self.texts_, strict=True):
            for w in set(words(title) + words(text)):
                df[w] = df.get(w, 0) + 1
        self._vocab_rank = {w: r for r, w in enumerate(sorted(df, key=lambda w: (-df[w], w)))}
        self._spelling = _spellings(self.titles_)
        # by length, so a misspelt word is compared only with words within its edit budget of its length
        self._vocab_by_len: dict[int, list[str]] = {}
        for w in self._vocab_rank:  # frequency order is kept within each length
            self._vocab_by_len.setdefault(len(w), []).append(w)
        self._folded_titles = [plain(t) for t in self.titles_]
        # a query that is a whole title names that item: it comes first. Also the title without a film's year
        # in parentheses, and typed without the punctuation inside its words ("murphys romance"), each a match
        # of lower rank (a title typed exactly before one whose year was left out)
        self._exact: dict[str, list[tuple[int, int]]] = {}
        for i, (title, t) in enumerate(zip(self.titles_, self._folded_titles, strict=True)):
            bare = _YEAR.sub("", title)
            forms = [t, plain(bare)]
            if _JOINED.search(title):
                forms += [plain(joined(title)), plain(joined(bare))]
            for rank, key in enumerate(dict.fromkeys(f for f in forms if f)):
                self._exact.setdefault(key, []).append((rank, i))
        lengths = np.fromiter((len(t) for t in self._folded_titles), np.int64, len(self._folded_titles))
        self._titles_by_len = np.argsort(lengths, kind="stable")
        self._title_lengths = lengths[self._titles_by_len]
        self._titles_sorted = [self._folded_titles[i] for i in self._titles_by_len]
        pop = np.log1p(self.counts_[1:])
        self._pop = pop / max(float(pop.max()), 1.0)
        # suggestions: (word-start prefix, item) pairs sorted for a binary search per prefix
        keys, items = [], []
        self._joined_titles = {}  # the titles whose words hold punctuation, as typed without it ("mash")
        for i, (title, t) in enumerate(zip(self.titles_, self._folded_titles, strict=True)):
            if _JOINED.search(title) and (jt := plain(joined(title))) != t:
                self._joined_titles[i] = jt
            for form in (t, self._joined_titles.get(i)):
                toks = form.split() if form else []
                for j in range(len(toks)):
                    keys.append(" ".join(toks[j:]))
                    items.append(i)
        # a Python sort: numpy's would pad every key to the longest one's width (GBs for one long title)
        order = sorted(range(len(keys)), key=keys.__getitem__)
        self._sugg_keys = [keys[o] for o in order]
        self._sugg_items = np.asarray(items, dtype=np.int64)[order]
        self._dense = None if self.vectors_ is None else self.vectors_.astype(np.float32) * self.scales_[:, None]
        self._ann = ann
        if self._dense is not None and ann is None and self.n_items_ >= cfg.ann_min_items:
            from usearch.index import Index

            self._ann = Index(ndim=self._dense.shape[1], metric="ip", dtype="i8" if cfg.vectors == "int8" else "f32")
            self._ann.add(np.arange(self.n_items_), self._dense, threads=1)
        self._qcache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._qlock = threading.Lock()
        self._encoder = query_encoder()  # shared by the process; opened on the first query or by load()
        return self

    def _terms(self, toks: list[str]) -> list[str]:
        if self._stemmer is None:
            return toks
        return [self._stemmer.stemWord(t) if t.isascii() else t for t in toks]

    # -- recommender signal -------------------------------------------------------------------------------

    def score(self, histories: list[np.ndarray]) -> np.ndarray:
        """_taste for a batch of histories: the co-occurrence sums as one sparse product and the vectors' part as
        one matrix product (a user at a time took 124,000 items' evaluation 20 ms a user)."""
        n = self.n_items_ + 1
        hs = [self._recent(h) for h in histories]
        lens = np.array([len(h) for h in hs], dtype=np.int64)
        votes = sp.csr_matrix((np.repeat(1.0 / np.maximum(lens, 1), lens),  # each history's mean row
                               (np.repeat(np.arange(len(hs)), lens), np.concatenate(hs or [lens]))),  # [] -> []
                              shape=(len(hs), n), dtype=np.float32)
        out = (votes @ self.similarity_.astype(np.float32, copy=False)).toarray()
        if self._dense is not None and self._cfg.content_weight:
            some = np.flatnonzero(lens)
            if len(some):
                means = np.stack([self._dense[hs[r] - 1].mean(axis=0) for r in some])
                near = means @ self._dense.T
                near *= self._cfg.content_weight  # in place: a batch of 256 x 150,000 items is 150 MB a copy
                if len(some) == len(hs):
                    out[:, 1:] += near
                else:
                    out[some, 1:] += near
        out[:, 1:] += 1e-3 * self._pop.astype(np.float32)  # breaks ties for the unknown user
        out[:, 0] = -np.inf
        return out

    def _recent(self, history) -> np.ndarray:
        h = np.asarray(history, dtype=np.int64)
        return h[(h > 0) & (h <= self.n_items_)][-50:]  # the most recent 50 speak for the user

    def _taste(self, history, items: np.ndarray | None = None) -> np.ndarray:
        """How well each item (0-based ``items``, else all) goes with a history: its co-occurrence with the
        history's items plus, weighted, the similarity of its vector to their mean; all 0 when nothing does."""
        h = self._recent(history)
        cols = slice(None) if items is None else items
        if not len(h):
            return np.zeros(self.n_items_ if items is None else len(items), np.float32)
        out = (np.asarray(self.similarity_[h].sum(axis=0)).ravel()[1:][cols] / len(h)).astype(np.float32)
        if self._dense is not None and self._cfg.content_weight:
            out += self._cfg.content_weight * (self._dense[cols] @ self._dense[h - 1].mean(axis=0))
        return out

    # -- search -------------------------------------------------------------------------------------------

    def search(self, query: str, k: int = 10, mode: str | None = None, history: np.ndarray | None = None,
               allowed: np.ndarray | None = None) -> dict:
        cfg = self._cfg
        mode = mode or cfg.mode
        if not isinstance(query, str) or not query.strip():
            raise InvalidInputError("the search query is empty")
        if mode not in ("bm25", "semantic", "hybrid"):
            raise InvalidInputError(f"unknown search mode {mode!r}; use bm25, semantic or hybrid")
        if mode != "bm25" and self._dense is None:
            raise InvalidInputError(f"mode {mode!r} needs a model fitted with semantic=True")
        if int(k) < 1:
            raise InvalidInputError(f"k must be at least 1, got {k}")
        mask = self._mask(allowed)
        mask = None if mask is None else mask[1:]
        query = "".join(" " if unicodedata.category(c)[0] == "C" else c for c in query[:_MAX_QUERY_CHARS])
        if not query.strip():  # control and format characters only (a zero-width space): nothing to match
            return {"items": np.zeros(0, np.int64), "scores": np.zeros(0, np.float32), "mode": mode,
                    "corrected": None, "personalised": False}
        # the first 32 words: a no-space script's word gives two tokens a character, which a cap on tokens
        # would take from the query's later words
        if not _folded_words(query):  # punctuation, emoji or a lone mark: no word to match, nothing is relevant
            return {"items": np.zeros(0, np.int64), "scores": np.zeros(0, np.float32), "mode": mode,
                    "corrected": None, "personalised": False}
        toks, fixes, unknown = self._correct(words(" ".join(_folded_words(_POSSESSIVE.sub("", query))[:32])))
        # "did you mean": the query as typed with only its misspelt words replaced (not the index's folded
        # tokens: accents, case and no-space scripts stay as the person wrote them); MiniLM reads the same
        corrected = _LETTERS.sub(lambda m: _respelt_runs(m.group(), fixes), query) if fixes else None
        corrected = None if corrected == query else corrected
        text = corrected or query

        # each source: (its candidates best first, its score for any item, weight, only positive scores count)
        sources: list[tuple[np.ndarray, object, float, bool]] = []
        if mode in ("bm25", "hybrid"):
            ids = [self._term_ids[t] for t in self._terms(toks) if t in self._term_ids]
            if ids:
                bm = self._bm25_scores(ids)
                sources.append((self._top(bm, mask, positive=True), lambda c, bm=bm: bm[c], 1.0, True))
            if unknown:  # a misspelt name, or one "corrected" to another real word: match whole titles too
                fz = self._fuzzy_titles(plain(query), mask)
                sources.append((np.fromiter(fz, np.int64, len(fz)),
                                lambda c, fz=fz: np.array([fz.get(int(i), 0.0) for i in c]), 1.0, True))
        if mode in ("semantic", "hybrid"):
            q = self._query_vector(text)
            sources.append((self._semantic(q, mask), lambda c, q=q: self._dense[c] @ q,
                            cfg.semantic_weight if mode == "hybrid" else 1.0, False))
        sources = [src for src in sources if len(src[0])]
        if not sources:
            return {"items": np.zeros(0, np.int64), "scores": np.zeros(0, np.float32), "mode": mode,
                    "corrected": corrected, "personalised": False}
        personal = history is not None and len(np.asarray(history)) > 0
        items, scores, personal = self._fuse(sources, np.asarray(history) if personal else None, int(k))
        if mode != "semantic":  # popularity and the fusion's ranks cannot put a title below its own name
            items, scores = self._exact_first(plain(text), items, scores, mask, int(k))
        return {"items": items + 1, "scores": scores, "mode": mode, "corrected": corrected,
                "personalised": personal}

    def _exact_first(self, q: str, items: np.ndarray, scores: np.ndarray, mask, k: int):
        named = [(rank, i) for rank, i in self._exact.get(q, ()) if mask is None or mask[i]]
        if not named:
            return items, scores
        ids = {i for _, i in named}
        rest = [j for j, i in enumerate(items) if i not in ids]
        top = float(scores[0]) if len(scores) else 0.0
        lead = np.asarray([i for _, i in sorted(named, key=lambda x: (x[0], -self._pop[x[1]], x[1]))], np.int64)
        out = np.concatenate([lead, items[rest]])[:k]
        # above every fused score, in their order (the more popular of two equal titles first)
        boost = top + 1e-3 * np.arange(len(lead), 0, -1, dtype=np.float32)
        return out, np.concatenate([boost.astype(np.float32), scores[rest]])[:k]

    def _correct(self, toks: list[str]) -> tuple[list[str], dict[str, str], bool]:
        """Tokens with the misspelt ones replaced, each replaced token's correction, and whether any token
        was unknown to the index."""
        from rapidfuzz import process
        from rapidfuzz.distance import OSA

        cfg, out, fixes = self._cfg, [], {}
        unknown = any(t not in self._vocab_rank for t in toks)
        for t in toks:
            if t in self._vocab_rank or len(t) < cfg.typo_min_1 or not _ALPHA.fullmatch(t):
                out.append(t)
                continue
            edits = 2 if len(t) >= cfg.typo_min_2 else 1
            hits = [h for n in range(len(t) - edits, len(t) + edits + 1) for h in process.extract(
                t, self._vocab_by_len.get(n, ()), scorer=OSA.distance, score_cutoff=edits, limit=None)]
            if hits:  # closest first, then the most frequent; shown as the catalogue spells it (Björk, not bjork)
                best = min(hits, key=lambda h: (h[1], self._vocab_rank[h[0]]))[0]
                fixes[t], t = self._spelling.get(best, best), best
            out.append(t)
        return out, fixes, unknown

    def _fuzzy_titles(self, query: str, mask) -> dict[int, float]:
        from rapidfuzz import fuzz, process

        # ratio >= c needs the shorter of the two lengths to be at least c / (200 - c) of the longer
        f = self._cfg.fuzzy_cutoff / (200.0 - self._cfg.fuzzy_cutoff)
        lo = np.searchsorted(self._title_lengths, len(query) * f, "left")
        hi = np.searchsorted(self._title_lengths, len(query) / max(f, 1e-9), "right")
        # every title over the cutoff, then the filter, then the cut: a cut first could leave no allowed one
        hits = process.extract(query, self._titles_sorted[lo:hi], scorer=fuzz.ratio,
                               score_cutoff=self._cfg.fuzzy_cutoff, limit=None)
        hits = [(int(self._titles_by_len[lo + j]), s) for _, s, j in hits]
        hits = [(i, s) for i, s in hits if mask is None or mask[i]]
        hits.sort(key=lambda h: (-h[1], -self._pop[h[0]]))
        return dict(hits[:self._cfg.candidates])  # best first

    def _bm25_scores(self, ids: list[int]) -> np.ndarray:
        parts = [slice(self._bm25_indptr[i], self._bm25_indptr[i + 1]) for i in ids]
        return np.bincount(np.concatenate([self._bm25_indices[p] for p in parts]),
                           weights=np.concatenate([self._bm25_data[p] for p in parts]), minlength=self.n_items_)

    def _query_vector(self, text: str) -> np.ndarray:
        with self._qlock:  # one estimator answers every request of a replica
            cached = self._qcache.get(text)
            if cached is not None:
                self._qcache.move_to_end(text)
                return cached
        v = self._encoder.encode(text)
        if self._cfg.query_cache:
            with self._qlock:
                self._qcache[text] = v
                if len(self._qcache) > self._cfg.query_cache:
                    self._qcache.popitem(last=False)
        return v

    def _semantic(self, q: np.ndarray, mask) -> np.ndarray:
        n = self._cfg.candidates
        if self._ann is not None:
            m = self._ann.search(q, n * (4 if mask is not None else 1))
            idx = np.asarray(m.keys, np.int64)
            if mask is not None:
                idx = idx[mask[idx]]
            if len(idx) >= min(n, int(mask.sum()) if mask is not None else n):
                return idx[:n]
        return self._top(self._dense @ q, mask)  # exact: small catalogue, or a filter too tight for the ANN

    def _top(self, scores: np.ndarray, mask, positive: bool = False) -> np.ndarray:
        scores = np.asarray(scores, dtype=np.float32)
        ok = np.ones(len(scores), bool) if mask is None else mask.copy()
        if positive:
            ok &= scores > 0
        cand = np.flatnonzero(ok)
        n = min(self._cfg.candidates, len(cand))
        if n == 0:
            return np.zeros(0, np.int64)
        top = cand[np.argpartition(-scores[cand], n - 1)[:n]] if len(cand) > n else cand
        # ties (common in BM25 over short texts) go to the more popular item, deterministically
        return top[np.lexsort((top, -self._pop[top], -scores[top]))]

    def _fuse(self, sources, history, k: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """Candidates are the union of the sources' lists; every signal then scores every candidate (a lexical
        match the vector list missed still gets its semantic similarity), ranks are fused (RRF) or min-max
        scores mixed. Popularity and the user's taste only re-rank: they never add an off-query item. Also
        returns whether the taste took part: a history that relates to none of the candidates says nothing
        (its ranks would only be popularity's again)."""
        cfg = self._cfg
        cand = np.unique(np.concatenate([src[0] for src in sources]))
        signals = [(score(cand), w, positive) for _, score, w, positive in sources]
        signals.append((self._pop[cand], cfg.popularity_weight, False))
        personal = False
        if history is not None:
            # score()'s values for the candidates only: the content term is not worked out for the whole catalogue
            taste = self._taste(history, cand)
            personal = bool(cfg.personal_weight and (np.asarray(taste) > 0).any())
            if personal:
                signals.append((taste + 1e-3 * self._pop[cand].astype(np.float32), cfg.personal_weight, False))
        fused = np.zeros(len(cand), np.float64)
        for signal, w, positive in signals:
            signal = np.asarray(signal, np.float64)
            counts = signal > 0 if positive else np.ones(len(cand), bool)
            if not w or not counts.any():
                continue
            if cfg.fusion == "rrf":
                # tied scores share the best rank (BM25 over short texts ties a lot): the other signals decide
                ranks = 1 + np.searchsorted(np.sort(-signal), -signal, side="left")
                fused += np.where(counts, w / (cfg.rrf_k + ranks), 0.0)
            else:
                lo, hi = float(signal[counts].min()), float(signal[counts].max())
                fused += np.where(counts, w * ((signal - lo) / (hi - lo) if hi > lo else 1.0), 0.0)
        # a tie (one list's rank 1 and another's rank 2 against the reverse) goes to the closer match to the query:
        # the first source's score (BM25, or the vectors in semantic mode), not to the lower item id
        order = np.lexsort((cand, -np.asarray(signals[0][0], np.float64), -np.round(fused, 12)))[:k]
        return cand[order], fused[order].astype(np.float32), personal

    # -- suggestions --------------------------------------------------------------------------------------

    def _mask(self, allowed) -> np.ndarray | None:
        """`allowed` as a boolean mask by dense id (index 0 the padding), checked; None when not given."""
        mask = None if allowed is None else np.asarray(allowed, dtype=bool)
        if mask is not None and mask.shape != (self.n_items_ + 1,):
            raise InvalidInputError(f"allowed must be a mask of {self.n_items_ + 1} booleans")
        return mask

    def suggest(self, prefix: str, k: int = 5, history: np.ndarray | None = None,
                allowed: np.ndarray | None = None) -> list[dict]:
        """Titles that the prefix starts, or starts a later word of. Those the whole title starts come first
        (Algolia's "position" rule), each group by popularity, plus, with a history, how well each title goes
        with it (_taste, scaled to [0, 1] by the best of these titles, weight ``personal_weight``). A prefix
        alone cannot say which of its titles a person means (on Last.fm no ranking by prefix finds more than 80% of
        3-character draws in its top 5); the listener's other artists took 76% to 80% (84% to 87% drawn by
        plays; benchmarks/search_lastfm.py, each drawn pair held out of the history and the co-occurrence).
        `allowed`, as for :meth:`search`, a mask by dense id: only those titles are suggested."""
        if not isinstance(prefix, str) or not prefix.strip():
            raise InvalidInputError("the suggestion prefix is empty")
        mask = self._mask(allowed)
        p = plain(prefix[:200])
        if not p:
            return []
        import bisect

        lo = bisect.bisect_left(self._sugg_keys, p)
        hi = bisect.bisect_left(self._sugg_keys, p + "\U0010ffff")
        items = np.unique(self._sugg_items[lo:hi])
        if mask is not None:
            items = items[mask[items + 1]]
        if len(items) == 0:
            return []
        starts = np.fromiter((self._folded_titles[i].startswith(p) or self._joined_titles.get(i, "").startswith(p)
                              for i in items), bool, len(items))
        score = self._pop[items] + self._cfg.title_start_bonus * starts
        personal = False
        if history is not None and len(np.asarray(history)) and self._cfg.personal_weight:
            mine = np.maximum(self._taste(history, items).astype(np.float64), 0.0)
            top = float(mine.max())
            if top > 0:  # a history that goes with none of these titles leaves their order alone
                score = score + self._cfg.personal_weight * mine / top
                personal = True
        order = np.lexsort((items, -score))[:k]
        return [{"text": self.titles_[items[j]], "item": int(items[j]) + 1, "score": float(score[j]),
                 "personal": personal} for j in order]

    # -- persistence: json + npz, no pickle ---------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        (p / "config.json").write_text(json.dumps({  # whatever the machine's locale: titles in any script
            "family": self.family, "n_items": self.n_items_, "config": self.config_.model_dump(),
            "texts": self.texts_, "titles": self.titles_}, ensure_ascii=False), encoding="utf-8")
        s = self.similarity_.tocsr()
        arrays = {"counts": self.counts_, "sim_data": s.data, "sim_indices": s.indices, "sim_indptr": s.indptr}
        if self.vectors_ is not None:
            arrays |= {"vectors": self.vectors_, "scales": self.scales_}
        np.savez(p / "arrays.npz", **arrays)
        if self._ann is not None:
            self._ann.save(str(p / "ann.usearch"))

    @classmethod
    def load(cls, path: str | Path) -> Search:
        p = Path(path)
        meta = json.loads((p / "config.json").read_text(encoding="utf-8"))
        if not meta["config"].get("semantic", True):  # saved before bm25 became such an index's default mode
            meta["config"]["mode"] = "bm25"
        z = np.load(p / "arrays.npz", allow_pickle=False)
        est = cls(**meta["config"])
        est.config_, est.n_items_ = SearchConfig(**meta["config"]), meta["n_items"]
        est.texts_, est.titles_, est.counts_ = meta["texts"], meta["titles"], z["counts"]
        n = est.n_items_ + 1
        est.similarity_ = sp.csr_matrix((z["sim_data"], z["sim_indices"], z["sim_indptr"]), shape=(n, n))
        est.vectors_, est.scales_ = (z["vectors"], z["scales"]) if "vectors" in z else (None, None)
        if est.vectors_ is not None:  # a loaded index answers: the query encoder is ready before the first query
            query_encoder().warm()
        if (p / "ann.usearch").is_file():
            from usearch.index import Index

            return est._build(ann=Index.restore(str(p / "ann.usearch")))
        return est._build()


def _top_k_rows(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep each row's k largest entries."""
    m = m.tocsr()
    data, idx, indptr = [], [], [0]
    for r in range(m.shape[0]):
        a, b = m.indptr[r], m.indptr[r + 1]
        d, i = m.data[a:b], m.indices[a:b]
        if len(d) > k:
            top = np.argpartition(-d, k - 1)[:k]
            d, i = d[top], i[top]
        data.append(d)
        idx.append(i)
        indptr.append(indptr[-1] + len(d))
    return sp.csr_matrix((np.concatenate(data), np.concatenate(idx), np.asarray(indptr)), shape=m.shape)
