"""/recommend on a large catalogue: a two-tower model over a synthetic 1,000,000-item catalogue (served through
the fast-scan PQ index of serving/_vectors.py) beside the same family on MovieLens-1M's 3,416 items (exact scoring).

For each: the recall@10 of the served answers against exact scoring of every item (1,000 random users, their
history excluded, in process), the in-process latency of one answer with and without the index, HTTP
latency and throughput at each concurrency (answer cache off, so every request runs the model), the
replicas' resident memory, and the index's build time and file size.

The synthetic catalogues (`--catalogues`): items come in groups of 100 (consecutive ids).
- `uniform`: 125,000 users; every item is played exactly once: the groups in random order, each group's items
  shuffled, cut into consecutive runs of 8 items, one user each. 8 does not divide 100, so most users play 8
  items of one group, but one in 25 straddles two groups (4 items of one, 4 of the group after it in that random
  order). No item is played twice, so a model learns next to nothing about any one item: its vectors
  stay near their random start, the hardest case for an index.
- `popular` (the default's 1M row): the same, plus as many users again, each playing 8 distinct items of one
  group, group and items drawn by popularity (Zipf, exponent 1.1, over groups and over the items of a group), as
  real catalogues have a popular head and a long tail played once or twice.

    .venv/bin/python benchmarks/serving_ann.py --data ../shared/data
    .venv/bin/python benchmarks/serving_ann.py --data ../shared/data --catalogues ml1m popular --items 200000 \
        --budget 1   # quicker
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import client_session, free_port, http_caller, load  # noqa: E402


def synthetic(out: Path, n_items: int, per_user: int, popular: bool, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    group = 100
    n_groups = n_items // group
    items = np.concatenate([g * group + rng.permutation(group) for g in rng.permutation(n_groups)]) + 1
    items = items[: (len(items) // per_user) * per_user]
    if popular:  # as many users again, by popularity: a group by Zipf, then per_user of its items by Zipf
        zipf = lambda n: (w := 1.0 / np.arange(1, n + 1) ** 1.1) / w.sum()  # noqa: E731
        n_pop = len(items) // per_user
        groups = rng.permutation(n_groups)[rng.choice(n_groups, size=n_pop, p=zipf(n_groups))]
        # per_user distinct items of the group, each drawn by its weight (Gumbel top-k: without replacement)
        keys = np.log(zipf(group))[rng.permutation(group)] + rng.gumbel(size=(n_pop, group))
        picks = np.argpartition(-keys, per_user - 1, axis=1)[:, :per_user]
        items = np.concatenate([items, (groups[:, None] * group + picks + 1).ravel()])
    users = np.repeat(np.arange(1, len(items) // per_user + 1), per_user)
    stamps = 1_700_000_000 + np.tile(np.arange(per_user) * 600, len(items) // per_user) + users * 7
    out.mkdir(parents=True, exist_ok=True)
    path = out / "interactions.csv"
    pd.DataFrame({"user_id": users, "item_id": items, "timestamp": stamps}).to_csv(path, index=False)
    return path


def replica_rss(endpoint: str) -> float:
    """Resident MiB of the endpoint's replica processes (Ray names them ServeReplica:<app>:<deployment>)."""
    total = 0
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "ServeReplica" in cmd and endpoint in cmd:
            total += p.memory_info().rss
    return total / 2**20


def recall_and_latency(ref: str, s, users: list[int], n: int = 1000) -> dict:
    from aimass import serving

    rng = np.random.default_rng(1)
    chosen = [int(u) for u in rng.choice(users, size=min(n, len(users)), replace=False)]
    quiet = {"serve_cache_users": 0}
    started = time.time() - 1  # this catalogue's index file, not an earlier one's
    t0 = time.perf_counter()
    fast = serving.Engine(ref, s.model_copy(update=quiet))
    load_s = time.perf_counter() - t0
    exact = serving.Engine(ref, s.model_copy(update={**quiet, "serve_ann_min_items": 0}))
    head = getattr(fast.vectors, "head", None)
    head = set() if head is None else set(fast.item_ids[head - 1].tolist())
    hits, in_head, t_fast, t_exact = [], [], [], []
    for u in chosen:
        t = time.perf_counter()
        a = fast.recommend(u, None, 10)["items"]
        t_fast.append(time.perf_counter() - t)
        t = time.perf_counter()
        b = exact.recommend(u, None, 10)["items"]
        t_exact.append(time.perf_counter() - t)
        hits.append(len(set(a) & set(b)) / 10)
        in_head.append(len(head & set(b)) / 10)  # what the exactly scored head alone would find
    ms = lambda x, q: float(np.percentile(x, q) * 1000)  # noqa: E731
    files = [f for f in (s.home / "cache" / "ann").glob("*.faiss") if f.stat().st_mtime >= started]
    return {"recall": float(np.mean(hits)), "head_share": float(np.mean(in_head)),
            "index": fast.vectors is not None and fast.vectors.index is not None,
            "load_s": load_s, "p50": ms(t_fast, 50), "p99": ms(t_fast, 99),
            "exact_p50": ms(t_exact, 50), "exact_p99": ms(t_exact, 99),
            "index_mib": sum(f.stat().st_size for f in files) / 2**20}


async def over_http(d, key: str, users: list[int], levels: list[int], seconds: float) -> list[dict]:
    rows = []
    async with client_session(max(levels)) as client:
        call = http_caller(client, d.url + "/recommend", key)
        for c in levels:
            rows.append({"concurrency": c, **await load(call, users, c, seconds)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--catalogues", nargs="+", choices=["ml1m", "popular", "uniform"],
                    default=["ml1m", "popular", "uniform"])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--budget", type=float, default=3.0, help="training minutes per model")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--ann-min-items", type=int, default=100_000,
                    help="AIMASS_SERVE_ANN_MIN_ITEMS for both models (the product's default is 100,000 too; "
                    "0: always exact)")
    a = ap.parse_args()

    import ray

    import aimass
    from aimass import registry, serving
    from aimass.settings import Settings

    out = []
    with tempfile.TemporaryDirectory(prefix="aimass-ann-") as tmp:
        s = Settings(home=Path(tmp) / "home", serve_port=free_port(), serve_cache_users=0,
                     serve_ann_min_items=a.ann_min_items)
        data = a.data.expanduser().resolve()
        for name in a.catalogues:
            if name == "ml1m":
                aimass.datasets.register("ml1m", data / "ml-1m-seq", "ml1m-seq", settings=s)
            else:
                csv = synthetic(Path(tmp) / name, a.items, 8, popular=name == "popular")
                aimass.datasets.register(name, csv, "csv", settings=s)
        key, _ = serving.create_key("benchmark", settings=s)
        try:
            for name in a.catalogues:
                t0 = time.perf_counter()
                run = aimass.train("two-tower", name, {"epochs": 1000, "patience": None}, workers=0,
                                   time_budget_min=a.budget, max_test_users=2000, progress=False, settings=s)
                train_s = time.perf_counter() - t0
                ref = registry.register(run.run_id, f"tt-{name}", settings=s).ref
                ds = aimass.datasets.load(name, settings=s)
                users = sorted(ds.interactions["user_id"].unique().tolist())
                t0 = time.perf_counter()
                row = {"catalogue": name, "train_s": train_s, **recall_and_latency(ref, s, users)}
                print(f"{name}: recall@10 {row['recall']:.3f} (exact top 10 in the head: {row['head_share']:.3f}), "
                      f"engine load {row['load_s']:.1f} s "
                      f"(index build included), in process p50 {row['p50']:.2f} ms", flush=True)
                d = serving.deploy(ref, f"ann-{name}", min_replicas=1, max_replicas=1, settings=s)
                row["deploy_s"] = time.perf_counter() - t0
                row["http"] = asyncio.run(over_http(d, key, users, a.levels, a.seconds))
                row["rss_mib"] = replica_rss(f"ann-{name}")
                for r in row["http"]:
                    print(f"  c={r['concurrency']:<3} {r['rps']:7.1f} req/s p50 {r['p50']:7.2f} ms "
                          f"p99 {r['p99']:8.2f} ms errors={r['errors']}", flush=True)
                out.append(row)
                ray.shutdown()  # the driver's training cluster handle; the deployments live on
        finally:
            serving.shutdown(settings=s)

    print(f"\ntwo-tower /recommend, {os.cpu_count()} CPUs, client on the same machine, answer cache off\n")
    print("| catalogue | items scored by | recall@10 vs exact (head alone) | in-process p50 / p99 ms (exact) | "
          + " | ".join(f"c={c} req/s, p50 / p99 ms" for c in a.levels) + " | replica RSS MiB | index MiB |")
    print("|" + "---|" * (6 + len(a.levels)))
    for r in out:
        how = "PQ scan, re-scored exactly" if r["index"] else "exact"
        cells = " | ".join(f"{h['rps']:.0f}, {h['p50']:.1f} / {h['p99']:.1f}" for h in r["http"])
        print(f"| {r['catalogue']} | {how} | {r['recall']:.3f} ({r['head_share']:.3f}) | "
              f"{r['p50']:.2f} / {r['p99']:.2f} ({r['exact_p50']:.2f} / {r['exact_p99']:.2f}) | {cells} | "
              f"{r['rss_mib']:.0f} | {r['index_mib']:.0f} |")


if __name__ == "__main__":
    main()
