"""Answers of /recommend for a user id, kept by a replica per served version so that a hot user's repeated
request costs a lookup, not a scoring. An answer is kept with the user's generation in the online state (how
many of their feedback events it has applied): their next event makes it stale, in this replica at once and in
the others when their poll applies it. A version change needs nothing: each version's engine has its own cache,
and a split change only decides which engine answers. Only answers that depend on nothing but the user are
kept: no cold start (trending moves with everyone's feedback), no explicit history, exclusions or filters."""
from __future__ import annotations

import threading
from collections import OrderedDict

KEYS_PER_USER = 4  # answers kept per user (one per k and exclude_seen asked): the memory bound is users x 4


class Answers:
    def __init__(self, users: int):
        self.users = users
        self._kept: OrderedDict[int, dict] = OrderedDict()  # user -> {(k, exclude_seen): (generation, answer)}
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, user: int, key: tuple, generation: int, count_miss: bool = True) -> dict | None:
        with self._lock:
            entry = self._kept.get(user, {}).get(key)
            if entry is None or entry[0] != generation:
                self.misses += count_miss
                return None
            self._kept.move_to_end(user)
            self.hits += 1
        return dict(entry[1])  # the caller may pop fields of its copy

    def has(self, user: int, key: tuple, generation: int) -> bool:
        entry = self._kept.get(user, {}).get(key)  # a dict read is atomic under the GIL
        return entry is not None and entry[0] == generation

    def put(self, user: int, key: tuple, generation: int, answer: dict) -> None:
        with self._lock:
            kept = self._kept.setdefault(user, {})
            if kept and next(iter(kept.values()))[0] != generation:
                kept.clear()  # older generations of this user
            kept.pop(key, None)
            while len(kept) >= KEYS_PER_USER:  # a client cycling k and exclude_seen must not grow one user's entry
                kept.pop(next(iter(kept)))  # the oldest key of the user
            kept[key] = (generation, dict(answer))
            self._kept.move_to_end(user)
            while len(self._kept) > self.users:
                self._kept.popitem(last=False)
