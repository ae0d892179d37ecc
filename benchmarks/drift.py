"""Time of a drift report over a window of 10,000 answers (target: under 10 s), for an unshifted window (random
users) and a shifted one (only the top-decile users), with the training reference built in the call or
read from the cache, in this process and in a fresh one (what `aimass monitor drift` and a scheduled report
pay: Evidently's import included).

The answers are the model's real answers (Engine.recommend), written to the served-answer log as a replica
writes them; no Ray Serve is started. Training the demo model starts a local Ray for a few seconds.

    python benchmarks/drift.py                                   # 3,000 users, 1,000 tracks, item-kNN
    python benchmarks/drift.py --family sasrec --answers 10000 --users 6000 --tracks 3000
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))  # benchmarks/serving.py


def prepare(home: Path, family: str, users: int, tracks: int):
    """The serving benchmark's demo home and trained version (benchmarks/serving.py)."""
    from aimass import registry
    from serving import prepare as demo_home

    s, ref = demo_home(home, family, users, tracks)
    return s, registry.get(ref, settings=s)


def serve(s, engine, version, endpoint: str, users: np.ndarray) -> float:
    from aimass.events import ServedLog

    log = ServedLog(s)
    t0 = time.perf_counter()
    for u in users:
        out = engine.recommend(user_id=int(u), history=None, k=10)
        log.record(endpoint, uuid.uuid4().hex, "recommend", version.name, version.version, int(u),
                   engine.histories[int(u)].tolist(), out["items"], out["scores"], out["strategy"])
    log.flush()
    return time.perf_counter() - t0


def fresh_process(home: Path, endpoint: str) -> float:
    """Seconds of one drift() in a new interpreter (imports included), as the CLI runs it."""
    code = ("import time; t = time.perf_counter(); from aimass import monitoring; "
            "from aimass.settings import Settings; "
            f"monitoring.drift({endpoint!r}, settings=Settings(home={str(home)!r})); "
            "print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="itemknn")
    ap.add_argument("--answers", type=int, default=10_000)
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--tracks", type=int, default=1000)
    ap.add_argument("--keep", help="keep the home in this folder (default: a temporary one, removed)")
    a = ap.parse_args()

    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="aimass-drift-"))
    try:
        from aimass import monitoring
        from aimass.monitoring import _reference
        from aimass.serving import Engine

        print(f"preparing: demo {a.users} users x {a.tracks} tracks, {a.family} ...", flush=True)
        s, v = prepare(root / "home", a.family, a.users, a.tracks)
        engine = Engine(v.ref, s)
        users = np.array(sorted(engine.histories))
        activity = np.array([len(engine.histories[u]) for u in users])
        rng = np.random.default_rng(0)
        windows = {"steady": rng.choice(users, a.answers),
                   "heavy": rng.choice(users[activity >= np.quantile(activity, 0.9)], a.answers)}
        for name, chosen in windows.items():
            dt = serve(s, engine, v, name, chosen)
            print(f"served {a.answers} answers to {name!r} in {dt:.1f} s", flush=True)

        rows = []

        def timed(label: str, endpoint: str) -> None:
            t0 = time.perf_counter()
            r = monitoring.drift(endpoint, settings=s)
            dt = time.perf_counter() - t0
            rows.append((label, endpoint, r.n_current, r.n_reference, "yes" if r.drifted else "no",
                         len(r.drifted_columns), r.reference_seconds, dt))

        timed("first call: Evidently import + reference build", "steady")
        timed("reference cached", "steady")
        timed("reference cached", "heavy")
        shutil.rmtree(_reference.folder(s, v.name, v.version))
        timed("reference rebuilt", "heavy")
        for endpoint in ("steady", "heavy"):
            dt = fresh_process(s.home, endpoint)
            rows.append(("fresh process, reference cached", endpoint, a.answers, None, "", None, None, dt))

        print(f"\nmodel {v.ref} ({a.family}); demo {a.users} users x {a.tracks} tracks; reference "
              f"{_reference.USERS} users; target: under 10 s\n")
        head = f"{'call':48} {'window':8} {'answers':>8} {'ref':>6} {'drift':>6} {'cols':>5} {'ref build s':>12} " \
               f"{'total s':>8}"
        print(head)
        print("-" * len(head))
        for label, ep, n, nref, d, cols, build, dt in rows:
            print(f"{label:48} {ep:8} {n:>8} {nref if nref is not None else '':>6} {d:>6} "
                  f"{cols if cols is not None else '':>5} {f'{build:.2f}' if build else '':>12} {dt:>8.2f}")
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
