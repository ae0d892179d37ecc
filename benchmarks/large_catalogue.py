"""Training jobs on a catalogue larger than the real data here: a generated Last.fm-format folder (by default
40,000 listeners of 150,000 artists, about 25 each, Zipf popularity; names in Latin, Cyrillic, katakana and
Arabic letters), registered in a temporary home; each family's job in its own process (`aimass train F --workers
0`), its wall time (validation, test over every user and logging included) and peak memory.

    .venv/bin/python benchmarks/large_catalogue.py [--users 40000] [--artists 150000] [--families F ...]
    .venv/bin/python benchmarks/large_catalogue.py --movielens --users 70000 --artists 10000 --per-user 140 \
        --families sasrec --budget 1      # MovieLens-10M's shape: ratings.dat and movies.dat, `::`-separated

The data has no structure beyond popularity, so popularity wins: the table is about time and memory. To time
other code, put its `platform` folder first: `PYTHONPATH=/path/to/old/platform .venv/bin/python benchmarks/...`.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

LETTERS = {
    "latin": ["ka", "ri", "mo", "to", "shi", "an", "el", "or", "ve", "la", "no", "zu", "be", "ra", "son", "ber"],
    "cyrillic": ["Ка", "ри", "мо", "то", "ша", "ан", "ель", "ор", "ве", "ла", "но"],
    "katakana": ["カ", "リ", "モ", "ト", "シ", "ア", "エ", "オ", "ベ", "ラ", "ノ", "ズ"],
    "arabic": ["كا", "ري", "مو", "تو", "شي", "ان"],
}


def generate(folder: Path, users: int, artists: int, per_user: int, seed: int = 1) -> int:
    """Write artists.dat and user_artists.dat (HetRec's tab-separated layout); returns the number of plays."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)

    def word(script: str) -> str:
        return "".join(rng.choice(LETTERS[script], int(rng.integers(2, 5))))

    scripts = rng.choice(list(LETTERS), artists, p=[0.6, 0.15, 0.15, 0.1])
    names = [f"{word(s).title()} {word(s).title()}" if s == "latin" else word(s) for s in scripts]
    pd.DataFrame({"id": np.arange(1, artists + 1), "name": names, "url": "", "pictureURL": ""}).to_csv(
        folder / "artists.dat", sep="\t", index=False)
    pop = 1.0 / np.arange(1, artists + 1) ** 0.9
    pop /= pop.sum()
    sizes = np.clip(rng.geometric(1 / per_user, users), 3, 300)
    plays = pd.DataFrame({"userID": np.repeat(np.arange(1, users + 1), sizes),
                          "artistID": rng.choice(artists, size=int(sizes.sum()), p=pop) + 1})
    plays = plays.drop_duplicates().sort_values(["userID", "artistID"])  # one row per pair, as HetRec's
    plays["weight"] = rng.integers(1, 5000, len(plays))
    plays.to_csv(folder / "user_artists.dat", sep="\t", index=False)
    return len(plays)


def generate_movielens(folder: Path, users: int, movies: int, per_user: int, seed: int = 1) -> int:
    """Write ratings.dat and movies.dat (MovieLens' `::`-separated layout, half-star ratings); returns the number
    of ratings."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    pop = 1.0 / np.arange(1, movies + 1) ** 0.8
    pop /= pop.sum()
    sizes = np.clip(rng.geometric(1 / per_user, users), 20, 3000)  # MovieLens keeps users with 20 ratings or more
    n = int(sizes.sum())
    r = pd.DataFrame({"u": np.repeat(np.arange(1, users + 1), sizes), "i": rng.choice(movies, n, p=pop) + 1,
                      "r": rng.integers(1, 11, n) / 2, "t": 978_300_000 + rng.integers(0, 10**8, n)})
    r = r.drop_duplicates(["u", "i"])
    (r.u.astype(str) + "::" + r.i.astype(str) + "::" + r.r.astype(str) + "::" + r.t.astype(str)).to_csv(
        folder / "ratings.dat", index=False, header=False)
    with open(folder / "movies.dat", "w", encoding="latin-1") as fh:
        fh.writelines(f"{i}::Film {i}: Part {i % 7} ({1950 + i % 70})::Drama|Comedy\n" for i in range(1, movies + 1))
    return len(r)


def timed(cmd: list[str], env: dict) -> tuple[float, float, int]:
    """Wall seconds, peak resident MiB and exit status of one process."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    return time.perf_counter() - t0, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=40_000)
    ap.add_argument("--artists", type=int, default=150_000)
    ap.add_argument("--per-user", type=int, default=25)
    ap.add_argument("--families", nargs="+", default=["popularity", "itemknn", "search"])
    ap.add_argument("--movielens", action="store_true",
                    help="a MovieLens-format folder (--artists movies, --per-user ratings) instead of Last.fm's")
    ap.add_argument("--budget", type=float, help="--time-budget (minutes) of each job")
    a = ap.parse_args()
    aimass = str(Path(sys.executable).with_name("aimass"))
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "AIMASS_HOME": str(Path(tmp) / "home")}
        if a.movielens:
            n = generate_movielens(Path(tmp) / "big", a.users, a.artists, a.per_user)
            print(f"{n:,} ratings by {a.users:,} users of up to {a.artists:,} movies", flush=True)
        else:
            n = generate(Path(tmp) / "big", a.users, a.artists, a.per_user)
            print(f"{n:,} plays by {a.users:,} listeners of up to {a.artists:,} artists", flush=True)
        fmt = "movielens-meta" if a.movielens else "lastfm"
        took, mib, rc = timed([aimass, "datasets", "register", "big", str(Path(tmp) / "big"), "--format", fmt], env)
        if rc:
            sys.exit(f"registering the generated folder failed (exit {rc})")
        print(f"registered in {took:.1f} s, peak {mib:,.0f} MiB\n\n| family | job s | peak MiB | exit |\n"
              "|---|---|---|---|", flush=True)
        budget = ["--time-budget", str(a.budget)] if a.budget else []
        for family in a.families:
            took, mib, rc = timed([aimass, "train", family, "--dataset", "big", "--workers", "0", *budget], env)
            print(f"| {family} | {took:.1f} | {mib:,.0f} | {rc} |", flush=True)


if __name__ == "__main__":
    main()
