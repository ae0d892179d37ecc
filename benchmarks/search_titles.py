"""Titles as people type them: every title whose words hold punctuation ("Murphy's Romance", "Spider-Man",
"M*A*S*H") searched without it ("murphys romance"), a film's year left out; where the title lands in the top 20
(BM25 mode, the index built from the catalogue's own plays). MovieLens-1M's 3,416 films (ml-1m-seq's items and
histories, movies.dat's titles) and Last.fm's 17,632 artists.

    python benchmarks/search_titles.py [--data ../shared/data]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import regex

sys.path.insert(0, str(Path(__file__).parent))  # benchmarks/search_lastfm.py

_INNER = regex.compile(r"(?:[\p{L}\p{N}]\p{M}*)+(?:[-*·.'’‐](?:[\p{L}\p{N}]\p{M}*)+)+")


def movielens(root: Path) -> tuple[list[str], list[str], list[np.ndarray]]:
    movies = {}
    for line in (root / "ml-1m-meta" / "movies.dat").read_text(encoding="latin-1").splitlines():
        mid, title, genres = line.split("::")
        movies[int(mid)] = (title, genres.replace("|", ", "))
    seq = root / "ml-1m-seq"
    original = dict(tuple(map(int, x.split())) for x in (seq / "sas_to_original_items.txt").read_text().splitlines())
    titles = [movies[original[i]][0] for i in range(1, len(original) + 1)]
    texts = [f"{t} | {movies[original[i]][1]}" for i, t in enumerate(titles, 1)]
    seqs = [np.array(list(map(int, x.split()))) for x in (seq / "train_input.txt").read_text().splitlines()]
    return titles, texts, seqs


def lastfm(root: Path) -> tuple[list[str], list[str], list[np.ndarray]]:
    from search_lastfm import read_lastfm

    data = read_lastfm(root / "lastfm-2k")
    return list(data["names"]), list(data["texts"]), list(data["histories"].values())


def ranks(titles: list[str], texts: list[str], seqs: list[np.ndarray]) -> list[int]:
    from aimass.zoo.search import Search

    est = Search(semantic=False, mode="bm25").fit(seqs, len(titles), item_table={"title": titles, "text": texts})
    out = []
    for i, title in enumerate(titles):
        if not _INNER.search(title):
            continue
        q = _INNER.sub(lambda m: regex.sub(r"[-*·.'’‐]", "", m.group()), regex.sub(r"\s*\(\d{4}\)$", "", title))
        q = regex.sub(r"[^\p{L}\p{N}\s]", " ", q).lower()
        if q.strip():
            got = est.search(q, 20)["items"].tolist()
            out.append(got.index(i + 1) + 1 if i + 1 in got else 0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data")
    root = Path(ap.parse_args().data)
    print("| catalogue | titles with inner punctuation | rank 1 | top 5 | not in top 20 |\n|---|---|---|---|---|")
    for name, load in (("MovieLens-1M", movielens), ("Last.fm", lastfm)):
        r = np.array(ranks(*load(root)))
        print(f"| {name} | {len(r)} | {(r == 1).sum()} | {((r >= 1) & (r <= 5)).sum()} | {(r == 0).sum()} |",
              flush=True)


if __name__ == "__main__":
    main()
