"""Latency and throughput of POST /recommend at concurrency 1, 16 and 64, measured in one run for three paths
of the same registered version:

  serve    the aimass deployment: the Bento's ASGI app inside Ray Serve (HAProxy path when available)
  serve-x2   the same with two replicas (one per core of a 2-core machine; the others have one)
  serve-nocache  the same with the replica's answer cache off (AIMASS_SERVE_CACHE_USERS=0)
  serve-batch    cache off, the model's pass batched across requests (AIMASS_SERVE_BATCH_MAX=64; off by default)
  serve-batch-wait  the same, a batch's first request waiting --batch-wait-ms for more (only with --paths)
  bentoml  bare `bentoml serve` of the Bento built from that version (one worker)
  inproc   the in-process call the services make (Engine.recommend), no HTTP

--client wrk sends the HTTP paths' requests with wrk (C, one thread; apt-get install wrk) instead of aiohttp in
this process: the issue's own figures were measured with it, and it takes far less of the shared cores.

--cpu adds where each request's CPU time went (client, HAProxy, the replica or bentoml's processes, the rest of
Ray, anything else): on 2 cores shared by all of them, a path's throughput is 2 s of CPU over its CPU per request.

Every path with the answer cache on is measured once its replicas have warmed it (AIMASS_SERVE_CACHE_WARM_USERS:
the default answers of the most active users, computed when a version loads); the wait is printed.

The client is aiohttp with asyncio, on the same machine (it shares the CPUs: numbers are a floor). httpx's
connection pool was the bottleneck at 64 connections (benchmarks/feedback.py).

    python benchmarks/serving.py                       # demo data, an item-kNN model, 8 s per level
    python benchmarks/serving.py --family sasrec --seconds 5 --levels 1 16 64
    python benchmarks/serving.py --family sasrec --ml1m ../shared/data --paths serve-nocache serve-batch --rounds 3
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from aimass.serving._cluster import free_port


def prepare(home: Path, family: str, users: int, tracks: int, ml1m: Path | None = None, int8: bool = False):
    import aimass
    from aimass import registry
    from aimass.settings import Settings

    s = Settings(home=home, serve_port=free_port())
    if ml1m is not None:  # the shared MovieLens-1M folder (ml-1m-seq, ml-1m-meta), read in place
        aimass.datasets.register("data", ml1m / "ml-1m-seq", "ml1m-seq", items=ml1m / "ml-1m-meta" / "movies.dat",
                                 settings=s)
    else:
        inter, items = aimass.datasets.generate_demo(home.parent / "demo", aimass.datasets.DemoConfig(
            users=users, tracks=tracks, seed=0))
        aimass.datasets.register("data", inter, "csv", items=items, settings=s)
    # one epoch: serving speed depends on the model's shape, not on how well it is trained
    params = {"epochs": 1} if family in ("sasrec", "two-tower") else None
    run = aimass.train(family, "data@v1", params, workers=1, progress=False, settings=s)
    import ray

    ray.shutdown()
    v = registry.register(run.run_id, "bench", settings=s)
    if int8:
        v = registry.compress("bench", v.version, "int8", settings=s)
    return s, v.ref


async def load(call, users: list[int], concurrency: int, seconds: float, on_start=None) -> dict:
    """`concurrency` workers send requests back to back for `seconds` (after a 1 s warm-up, then `on_start()`).
    `call` is an async function of a user, or a Wrk."""
    if isinstance(call, Wrk):
        await call.run(concurrency, 1.0)
        if on_start is not None:
            on_start()
        return await call.run(concurrency, seconds)
    lat: list[float] = []
    errors = done_in_window = 0
    stop_warm = time.perf_counter() + 1.0
    end = stop_warm + seconds

    async def worker():
        nonlocal errors, done_in_window
        rng = random.Random()
        while (now := time.perf_counter()) < end:
            try:
                ok = await call(rng.choice(users))
            except Exception:
                ok = False
            finished = time.perf_counter()
            if now >= stop_warm:
                lat.append(finished - now)
                errors += not ok
            # the rate counts what finished inside the window: the drain after it is no throughput
            done_in_window += stop_warm <= finished < end

    async def start():
        await asyncio.sleep(max(0.0, stop_warm - time.perf_counter()))
        if on_start is not None:
            on_start()

    await asyncio.gather(start(), *(worker() for _ in range(concurrency)))
    a = np.array(lat) * 1000
    return {"n": len(a), "rps": done_in_window / seconds,
            "p50": float(np.percentile(a, 50)) if len(a) else float("nan"),
            "p99": float(np.percentile(a, 99)) if len(a) else float("nan"), "errors": errors}


# wrk's script: POST one of the bodies at random; its summary on one line the benchmark reads
_LUA = """local bodies = {}
for line in io.lines("%s") do bodies[#bodies + 1] = line end
math.randomseed(os.time())
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
request = function() return wrk.format(nil, nil, nil, bodies[math.random(#bodies)]) end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("AIMASS %%d %%d %%d %%d %%d\\n", summary.requests, e.connect + e.read + e.write + e.status +
    e.timeout, summary.duration, latency:percentile(50), latency:percentile(99)))
end
"""


class Wrk:
    """POST {"user_id": U, "k": 10} to `url` for random users through wrk (C, one thread): a client that takes far
    less of the shared cores than aiohttp (Debian's `wrk` package)."""

    def __init__(self, url: str, key: str, users: list, folder: Path):
        import json
        import shutil

        if shutil.which("wrk") is None:
            raise SystemExit("--client wrk needs wrk on PATH (apt-get install wrk)")
        self.url = url
        self.script = folder / f"wrk-{len(list(folder.glob('wrk-*.lua')))}.lua"
        bodies = self.script.with_suffix(".bodies")
        bodies.write_text("".join(json.dumps({"user_id": int(u) if isinstance(u, np.integer) else u, "k": 10}) +
                                  "\n" for u in users))
        self.script.touch(mode=0o600)  # it holds the key
        self.script.write_text(_LUA % (bodies, key))

    async def run(self, concurrency: int, seconds: float) -> dict:
        p = await asyncio.create_subprocess_exec(
            "wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "30s", "--latency", "-s",
            str(self.script),
            self.url, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await p.communicate()
        line = next((x for x in out.decode().splitlines() if x.startswith("AIMASS ")), None)
        if line is None:
            raise RuntimeError(f"wrk failed: {(out + err).decode()[-500:]}")
        n, errors, duration_us, p50_us, p99_us = (int(x) for x in line.split()[1:])
        return {"n": n, "rps": n / (duration_us / 1e6), "p50": p50_us / 1000, "p99": p99_us / 1000,
                "errors": errors}


def client_session(connections: int):
    """An aiohttp session for `connections` concurrent requests."""
    import aiohttp

    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections),
                                 timeout=aiohttp.ClientTimeout(total=30))


def http_caller(client, url: str, key: str):
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    async def call(user: int) -> bool:
        async with client.post(url, data=f'{{"user_id": {user}, "k": 10}}'.encode(), headers=headers) as r:
            await r.read()
            return r.status == 200

    return call


def start_bentoml(s, tag: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "BENTOML_HOME": str(s.home / "bentos"), "AIMASS_HOME": str(s.home),
           "BENTOML_DO_NOT_TRACK": "True"}
    bentoml = Path(sys.executable).with_name("bentoml")
    p = subprocess.Popen([str(bentoml), "serve", tag, "--host", "127.0.0.1", "--port", str(port)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import httpx

        deadline = time.time() + 180
        while time.time() < deadline:
            if p.poll() is not None:
                raise RuntimeError(f"bentoml serve exited with code {p.returncode} before it was ready")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    return p
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RuntimeError("bentoml serve did not become ready in 180 s")
    except BaseException:  # not ready, or interrupted: its workers must not outlive the benchmark
        stop_tree(p)
        raise


def stop_tree(p: subprocess.Popen, timeout: float = 30) -> None:
    """Stops `p` and every process under it (bentoml serve's workers): SIGTERM to all, up to `timeout` s for them
    to exit, SIGKILL to what is left; `p` is reaped."""
    import psutil

    try:
        parent = psutil.Process(p.pid)
        procs = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        procs = []
    for q in procs:
        try:
            q.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for q in alive:
        try:
            q.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    try:
        p.wait(timeout=5)
    except subprocess.TimeoutExpired:  # survived SIGKILL for 5 s (uninterruptible sleep): nothing more to do
        pass


def cpu_times(bento_pid: int | None, app: str | None = None) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) so far of every process this user can read, with the part it plays: the
    replicas of Serve application `app` (of any, if None; of none, if "") are "replica", others are "ray". wrk's
    runs, which end before a mark is taken, are counted by resource usage of this process's reaped children."""
    import resource

    import psutil

    me, out = os.getpid(), {}
    bento = set()
    if bento_pid is not None:
        try:
            b = psutil.Process(bento_pid)
            bento = {b.pid, *(c.pid for c in b.children(recursive=True))}
        except psutil.NoSuchProcess:
            pass
    for p in psutil.process_iter(["pid", "name", "cmdline", "cpu_times"]):
        t = p.info["cpu_times"]
        if t is None:
            continue
        line = " ".join(p.info["cmdline"] or [])
        part = ("client" if p.pid == me else "haproxy" if p.info["name"] == "haproxy" else
                "replica" if line.startswith("ray::ServeReplica" if app is None else f"ray::ServeReplica:{app}:") else
                "bentoml" if p.pid in bento else
                "ray" if "ray" in line or p.info["name"] in ("raylet", "gcs_server") else "other")
        out[p.pid] = (part, t.user + t.system)
    out[0] = ("(cores idle)", psutil.cpu_times().idle)  # what nobody used: the rest is the kernel's own
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    out[-1] = ("client", children.ru_utime + children.ru_stime)  # wrk
    return out


async def measured(call, users: list[int], concurrency: int, seconds: float, cpu: bool,
                   bento_pid: int | None = None, app: str | None = None) -> dict:
    """load(), with the CPU time each part spent per request over the measured seconds if `cpu` (cpu_times)."""
    if not cpu:
        return await load(call, users, concurrency, seconds)
    marks: list[dict] = []
    r = await load(call, users, concurrency, seconds, on_start=lambda: marks.append(cpu_times(bento_pid, app)))
    after, parts = cpu_times(bento_pid, app), {}
    for pid, (part, t) in after.items():  # a process that started meanwhile counts whole; one that ended, not
        parts[part] = parts.get(part, 0.0) + t - marks[0].get(pid, (part, 0.0))[1]
    r["cpu_ms"] = {k: 1000 * v / max(r["n"], 1) for k, v in parts.items()}
    return r


def cpu_line(r: dict) -> str:
    parts = sorted(r["cpu_ms"].items())
    return ("   CPU ms a request: " + ", ".join(f"{k} {v:.3f}" for k, v in parts if v >= 0.0005) +
            f"; all processes {sum(v for k, v in parts if not k.startswith('(')):.3f}")


PATHS = ("serve", "serve-x2", "serve-nocache", "serve-batch", "serve-batch-wait", "bentoml", "inproc")
DEFAULT_PATHS = tuple(p for p in PATHS if p != "serve-batch-wait")  # the wait is measured on request
BATCH_WAIT_MS = 2.0


async def run_all(s, ref: str, levels: list[int], seconds: float, paths=DEFAULT_PATHS, rounds: int = 1,
                  batch_wait_ms: float = BATCH_WAIT_MS, cpu: bool = False, client_kind: str = "aiohttp") -> list[dict]:
    from aimass import serving

    key, _ = serving.create_key("benchmark", settings=s)
    admin, _ = serving.create_key("benchmark-admin", role="admin", settings=s)
    engine = serving.Engine(ref, s.model_copy(update={"serve_cache_users": 0}))  # the model call, uncached
    users = list(engine.histories)
    rows = []

    async def inproc(user: int) -> bool:
        await asyncio.to_thread(engine.recommend, user, None, 10)
        return True

    variants = {"serve": {}, "serve-x2": {}, "serve-nocache": {"serve_cache_users": 0},
                "serve-batch": {"serve_cache_users": 0, "serve_batch_max": 64},
                "serve-batch-wait": {"serve_cache_users": 0, "serve_batch_max": 64,
                                     "serve_batch_wait_ms": batch_wait_ms}}
    replicas = {p: 2 if p == "serve-x2" else 1 for p in paths}
    deployed: dict = {}
    bento, port = None, free_port()
    try:  # whatever fails from the first deploy on, the Serve cluster and its replicas are stopped
        for p in paths:
            if p in variants:
                deployed[p] = serving.deploy(ref, p.replace("serve-", "") if p != "serve" else "bench",
                                             min_replicas=replicas[p], max_replicas=replicas[p],
                                             settings=s.model_copy(update=variants[p]))
        if "bentoml" in paths:
            bento = start_bentoml(s, serving.build_bento(ref, settings=s), port)
        try:
            async with client_session(max(levels)) as client:
                urls = {p: d.url for p, d in deployed.items() if variants[p].get("serve_cache_users", 1)}
                if bento is not None:
                    urls["bentoml"] = f"http://127.0.0.1:{port}"
                want = min(len(users), s.serve_cache_warm_users, s.serve_cache_users)
                t0 = time.perf_counter()
                for p, url in urls.items():
                    await warmed(client, url, admin, want, 2 * replicas.get(p, 1))
                print(f"cache warm-up: {want} answers per replica, all paths warm after "
                      f"{time.perf_counter() - t0:.0f} s", flush=True)

                def caller(url: str):
                    return (Wrk(url, key, users, s.home) if client_kind == "wrk" else
                            http_caller(client, url, key))

                calls = {p: caller(d.url + "/recommend") for p, d in deployed.items()}
                if bento is not None:
                    calls["bentoml"] = caller(f"http://127.0.0.1:{port}/recommend")
                if "inproc" in paths:
                    calls["inproc"] = inproc
                calls = {p: calls[p] for p in paths}
                # rounds > 1 interleave the paths level by level: a drift of the machine's load hits them alike
                order = ([(p, c, 0) for p in calls for c in levels] if rounds == 1 else
                         [(p, c, k) for c in levels for k in range(rounds) for p in calls])
                for name, c, k in order:
                    app = deployed[name].endpoint if name in deployed else ""  # bentoml's rows: every replica is "ray"
                    r = await measured(calls[name], users, c, seconds, cpu, bento.pid if bento else None, app)
                    rows.append({"path": name, "concurrency": c, "round": k, **r})
                    print(f"{name:13} c={c:<3} {r['rps']:8.1f} req/s  p50 {r['p50']:7.2f} ms  "
                          f"p99 {r['p99']:8.2f} ms  n={r['n']} errors={r['errors']}", flush=True)
                    if cpu:
                        print(cpu_line(r), flush=True)
        finally:
            if bento is not None:
                stop_tree(bento)
    finally:
        serving.shutdown(settings=s)
    rows.append({"proxy": next(iter(deployed.values())).proxy if deployed else "none"})
    return rows


async def warmed(client, url: str, admin: str, want: int, reads: int, timeout_s: float = 600) -> None:
    """Waits until `reads` reads of /metrics in a row (each may reach another replica) count `want` warmed
    answers."""
    in_a_row, deadline = 0, time.monotonic() + timeout_s
    while in_a_row < reads:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url}: the answer cache did not warm {want} answers in {timeout_s:.0f} s")
        async with client.get(url + "/metrics", headers={"Authorization": f"Bearer {admin}"}) as r:
            text = await r.text()
        n = next((float(line.split()[-1]) for line in text.splitlines()
                  if line.startswith("aimass_answer_cache_warmed ")), 0.0)
        in_a_row = in_a_row + 1 if n >= want else 0
        await asyncio.sleep(0.2 if n >= want else 1.0)


def demo_args(doc: str, levels: list[int]) -> argparse.ArgumentParser:
    """The options every serving benchmark shares: the model family, the demo's size, the load levels."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="itemknn", choices=["popularity", "itemknn", "sasrec", "two-tower"])
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--tracks", type=int, default=2000)
    ap.add_argument("--levels", type=int, nargs="+", default=levels)
    ap.add_argument("--seconds", type=float, default=8.0, help="measured s per level (+1 s warm-up)")
    ap.add_argument("--ml1m", type=Path, default=None, help="serve a model of MovieLens-1M from this shared data "
                    "folder (ml-1m-seq, ml-1m-meta) instead of the demo")
    ap.add_argument("--int8", action="store_true", help="serve the int8 compression of the trained version")
    return ap


def medians(rows: list[dict]) -> list[dict]:
    """One row per (path, level): the median of its rounds' req/s, p50 and p99."""
    out = []
    for key in dict.fromkeys((r["path"], r["concurrency"]) for r in rows):
        rs = [r for r in rows if (r["path"], r["concurrency"]) == key]
        out.append({"path": key[0], "concurrency": key[1], "errors": sum(r["errors"] for r in rs),
                    **{m: float(np.median([r[m] for r in rs])) for m in ("rps", "p50", "p99")}})
    return out


def main() -> None:
    ap = demo_args(__doc__, [1, 16, 64])
    ap.add_argument("--paths", nargs="+", choices=PATHS, default=list(DEFAULT_PATHS), help="the paths to measure")
    ap.add_argument("--rounds", type=int, default=1, help="rounds per path and level, interleaved (medians)")
    ap.add_argument("--batch-wait-ms", type=float, default=BATCH_WAIT_MS,
                    help="serve-batch-wait's AIMASS_SERVE_BATCH_WAIT_MS")
    ap.add_argument("--cpu", action="store_true", help="also the CPU time per request of each part (client, "
                    "HAProxy, replica or bentoml, the rest of Ray, other processes)")
    ap.add_argument("--client", choices=["aiohttp", "wrk"], default="aiohttp", help="the HTTP load generator: "
                    "aiohttp in this process, or wrk (one thread; apt-get install wrk), far cheaper on shared cores")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="aimass-bench-") as tmp:
        s, ref = prepare(Path(tmp) / "home", a.family, a.users, a.tracks, a.ml1m, a.int8)
        rows = asyncio.run(run_all(s, ref, a.levels, a.seconds, a.paths, a.rounds, a.batch_wait_ms, a.cpu,
                                   a.client))
    proxy = rows.pop()["proxy"]
    data = "ml1m" if a.ml1m else f"demo ({a.users} users, {a.tracks} tracks)"
    print(f"\n/recommend, {a.family}{' int8' if a.int8 else ''} on {data}, Serve proxy: {proxy}, "
          f"{os.cpu_count()} CPUs, client ({a.client}) on the same machine\n")
    if a.rounds > 1:
        print(f"medians of {a.rounds} interleaved rounds\n")
    print("| path | concurrency | req/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|---|")
    for r in medians(rows):
        print(f"| {r['path']} | {r['concurrency']} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
              f"{r['errors']} |")


if __name__ == "__main__":
    main()
