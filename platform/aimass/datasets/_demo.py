"""The built-in demo dataset: a music-streaming log with structure a sequential model can learn.

Artists belong to a genre and release tracks in album order; a listening session mostly continues the
current artist's album or moves to an artist of the same genre, and users prefer one to three genres. Each
user hears a track once (plays are aggregated), so leave-one-out evaluation with seen items excluded is
meaningful. Seeded and deterministic for a given config.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

GENRES = ["rock", "pop", "jazz", "hip-hop", "electronic", "classical", "folk", "metal", "soul", "reggae",
          "blues", "country"]
MOODS = ["chill", "energetic", "melancholic", "upbeat", "dark", "dreamy", "party", "acoustic", "live",
         "instrumental"]
WORDS = ["night", "river", "golden", "echo", "summer", "city", "fire", "blue", "heart", "shadow", "light",
         "road", "dream", "stone", "wild", "silver", "rain", "ocean", "ghost", "velvet", "storm", "paper",
         "neon", "morning", "honey", "iron", "glass", "north", "lonely", "electric"]


class DemoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    users: int = Field(1000, ge=10, le=1_000_000)
    tracks: int = Field(2000, ge=20, le=5_000_000)
    artists: int | None = Field(None, ge=2, description="default: tracks / 10")
    # named mean_history for compatibility; the lognormal draw below makes it the median
    mean_history: float = Field(40.0, ge=5, allow_inf_nan=False,
                                description="median plays per user (lognormal lengths: their mean is about 1.2x)")
    seed: int = Field(0, ge=0, description="numpy's generators take no negative seed")


def generate_demo(out: str | Path, config: DemoConfig | None = None) -> tuple[Path, Path]:
    """Write interactions.csv and items.csv into `out`; returns their paths."""
    from aimass.errors import InvalidInputError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"{out} is a file: the demo dataset is written into a folder")
    try:  # before the work: a parent that is a file, or a place this user cannot write, is the caller's to fix
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidInputError(f"cannot create the folder {out}: {e.strerror or e}") from None
    cfg = config or DemoConfig()
    rng = np.random.default_rng(cfg.seed)
    n_artists = cfg.artists or max(2, cfg.tracks // 10)
    artist_genre = rng.integers(0, len(GENRES), n_artists)
    track_artist = np.sort(rng.integers(0, n_artists, cfg.tracks))  # contiguous: a track's album order
    track_ids = np.arange(1, cfg.tracks + 1)
    first_of_artist = np.searchsorted(track_artist, np.arange(n_artists))
    artist_pop = rng.zipf(1.6, n_artists).clip(max=1000).astype(float)
    genre_tracks = [track_ids[artist_genre[track_artist] == g] for g in range(len(GENRES))]
    genre_weights = [artist_pop[track_artist[t - 1]] / artist_pop[track_artist[t - 1]].sum()
                     for t in genre_tracks]

    users, items, stamps, events, values = [], [], [], [], []
    lengths = np.maximum(5, rng.lognormal(np.log(cfg.mean_history), 0.6, cfg.users).astype(int))
    for u in range(cfg.users):
        liked = rng.choice(len(GENRES), size=rng.integers(1, 4), replace=False)
        seen: set[int] = set()
        t = 1_700_000_000 + int(rng.integers(0, 86_400 * 30))
        current = 0
        for _ in range(min(lengths[u], cfg.tracks // 2)):
            r = rng.random()
            if current and r < 0.55 and current < cfg.tracks and track_artist[current] == track_artist[current - 1]:
                nxt = current + 1  # the album goes on
            elif current and r < 0.8:
                g = artist_genre[track_artist[current - 1]]
                nxt = int(rng.choice(genre_tracks[g], p=genre_weights[g])) if len(genre_tracks[g]) else 0
            else:
                g = int(rng.choice(liked))
                nxt = int(rng.choice(genre_tracks[g], p=genre_weights[g])) if len(genre_tracks[g]) else 0
            if not nxt or nxt in seen:
                nxt = int(rng.choice(track_ids))
                if nxt in seen:
                    continue
            seen.add(nxt)
            current = nxt
            t += int(rng.integers(150, 300)) if rng.random() > 0.1 else int(rng.integers(3600, 86_400))
            skipped = artist_genre[track_artist[nxt - 1]] not in liked and rng.random() < 0.5
            users.append(u + 1)
            items.append(nxt)
            stamps.append(t)
            events.append("skip" if skipped else "play")
            values.append(round(float(rng.uniform(0.05, 0.3) if skipped else rng.uniform(0.6, 1.0)), 3))

    inter = pd.DataFrame({"user_id": users, "item_id": items, "timestamp": stamps, "event": events,
                          "value": values}).sort_values("timestamp", kind="stable")
    words = rng.choice(WORDS, size=(cfg.tracks, 2))
    artist_names = [f"The {WORDS[a % len(WORDS)].title()} {WORDS[(a * 7 + 3) % len(WORDS)].title()} {a}"
                    for a in range(n_artists)]
    moods = rng.choice(MOODS, size=(cfg.tracks, 2))
    tracks = pd.DataFrame({
        "item_id": track_ids,
        "title": [f"{a.title()} {b.title()}" for a, b in words],
        "artist": [artist_names[a] for a in track_artist],
        "genre": [GENRES[artist_genre[a]] for a in track_artist],
        "tags": [f"{GENRES[artist_genre[a]]}, {m1}, {m2}" for a, (m1, m2) in zip(track_artist, moods, strict=False)],
        "album_position": track_ids - 1 - first_of_artist[track_artist],
    })
    tracks["text"] = tracks["title"] + " by " + tracks["artist"] + " | " + tracks["tags"]
    inter_path, items_path = out / "interactions.csv", out / "items.csv"
    inter.to_csv(inter_path, index=False)
    tracks.to_csv(items_path, index=False)
    return inter_path, items_path
