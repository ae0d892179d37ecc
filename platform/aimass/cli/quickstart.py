from __future__ import annotations

import contextlib
import math
from datetime import UTC, datetime

import typer

from aimass import console
from aimass.cli._common import JSON, demo_config, emit, retrain_outcome, rows, state
from aimass.settings import shown_url

# what a newcomer reads in the summary; every metric is in the MLflow run and in --json
_SHOWN = {"best_val_ndcg@10": "val NDCG@10", "test_ndcg@10": "test NDCG@10", "test_recall@10": "Recall@10",
          "test_mrr": "MRR"}


def quickstart(
    users: int = typer.Option(1000, help="Demo users"),
    tracks: int = typer.Option(2000, help="Demo tracks"),
    family: str = typer.Option("sasrec", help=(
        "Model family to train: sasrec, two-tower, mult-vae or ease (step 5 compresses it to int8)")),
    time_budget: float = typer.Option(3.0, "--time-budget", help="Minutes of training at most"),
    workers: int = typer.Option(1, "--workers", help="Ray Train workers"),
    traffic_users: int = typer.Option(300, "--traffic-users", min=1, help="Users of the demo traffic burst"),
    retrain_budget: float = typer.Option(1.0, "--retrain-budget", help="Minutes of retraining at most"),
    search: bool = typer.Option(True, "--search/--no-search", help="Step 11: a search index of the catalogue"),
    auto_budget: float = typer.Option(1.0, "--auto-budget",
                                      help="Step 12: minutes of model search (aimass train auto); 0 skips it"),
    as_json: bool = JSON,
):
    """The main job, end to end on the embedded default: demo dataset -> DVC registry -> Ray Train -> MLflow ->
    registry -> Ray Serve -> feedback -> drift report -> retraining and the gate -> a canary split."""
    from aimass import datasets, models, serving, training
    from aimass.cli.deploy import schedule
    from aimass.cli.traffic import view_lines
    from aimass.errors import AimassError, ConflictError, InvalidInputError
    from aimass.registry import check_compression
    from aimass.training import MIN_AUTO_BUDGET_MIN
    from aimass.zoo import family_class

    # every option refused before step 1: a bad one must not leave a registered demo dataset, or a deployment
    if auto_budget and not (math.isfinite(auto_budget) and auto_budget >= MIN_AUTO_BUDGET_MIN):
        raise InvalidInputError(f"--auto-budget must be 0 (no model search) or at least {MIN_AUTO_BUDGET_MIN:g} "
                                f"minute(s), got {auto_budget}")
    training.check_budget(time_budget, "--time-budget")
    training.check_budget(retrain_budget, "--retrain-budget")
    demo = demo_config(users=users, tracks=tracks)
    family_class(family)
    check_compression(family, "int8")  # step 5 compresses the model: a family it cannot apply to is refused now
    s = state.settings
    training.check_job(s, workers, None)
    serving.check_can_serve(settings=s)  # a taken port 8000 failed step 6, after the training
    console.stage(f"[1/12] generating the demo music-streaming log ({users} users, {tracks} tracks); log: "
                  f"{console.log_path()}")
    inter, items = datasets.generate_demo(s.home / "demo-data", demo)
    console.stage("[2/12] registering it in the DVC data registry")
    v = datasets.register("demo", inter, "csv", items=items, settings=s)
    ds = datasets.load(v.ref, settings=s)
    i = ds.interactions
    per_user = i.groupby("user_id").size()
    summary = {
        "dataset": v.ref,
        "content_hash": v.content_hash,
        "interactions": v.n_rows,
        "users": v.n_users,
        "items": v.n_items,
        "events": i["event"].value_counts().to_dict(),
        "history_length": {"min": int(per_user.min()), "median": float(per_user.median()),
                           "max": int(per_user.max())},
        "time_span_days": round((i["timestamp"].max() - i["timestamp"].min()) / 86_400, 1),
        "top_genres": ds.items.set_index("item_id").loc[i["item_id"], "genre"].value_counts().head(5).to_dict(),
        "registry": str(s.registry_path),
        "git_tag": v.git_tag,
    }
    console.stage(f"[3/12] training {family} on {v.ref} with Ray Train ({workers} worker(s), at most {time_budget} "
                  "min), tracked in MLflow")
    r = training.train(family, v.ref, workers=workers, time_budget_min=time_budget, progress=not as_json,
                       settings=s)
    run = {"run_id": r.run_id, "family": r.family, "epochs": r.epochs, "best_epoch": r.best_epoch,
           "wall_time_s": round(r.wall_time_s, 1), "model_uri": r.model_uri,
           **{k: round(val, 4) for k, val in r.metrics.items()}}
    name = f"demo-{family}"
    console.stage(f"[4/12] registering the run as model {name!r} in the MLflow registry and promoting it to "
                  "champion")
    mv = models.register(r.run_id, name, settings=s)
    # with no champion yet the gate checks latency alone, and the demo needs a champion to serve: a first
    # version that fails it (a busy machine) is forced, in the same pass of the gate, which its tags record
    first = not any("champion" in other.aliases for other in models.versions(name, settings=s))
    try:
        promotion = models.promote(name, mv.version, force=first, settings=s).model_dump(mode="json")
    except ConflictError as e:  # a rerun whose model is worse than the champion: the gate keeps the old one
        promotion = {"promoted": False, "reason": str(e)}
    if promotion.get("forced"):
        failed = "; ".join(f"{c['check']}: {c['detail']}" for c in promotion["checks"] if not c["passed"])
        console.stage(f"      the gate refused it ({failed}); forced: there is no champion yet")
    # the champion's child: a rerun whose model the gate refused canaries the int8 of what is served, not of it
    parent = mv if promotion["promoted"] else models.show(f"{name}@champion", settings=s)
    if parent.method != "original":  # an int8 child a previous run's canary promoted: its original is compressed
        parent = models.show(f"{name}/{parent.parent_version}", settings=s)
    # a rerun whose model the gate refused compresses the same champion again: its int8 child is reused
    small = next((m for m in models.versions(name, settings=s)
                  if m.method == "int8" and m.parent_version == parent.version), None)
    if small is None:
        console.stage(f"[5/12] compressing {parent.ref} to int8 (a child version, evaluated on the same split)")
        small = models.compress(name, parent.version, "int8", progress=not as_json, settings=s)
    else:
        console.stage(f"[5/12] {parent.ref}'s int8 child {small.ref} is there already (an earlier run's)")
    side = [_side(models.show(parent.ref, settings=s), small.metrics, "parent_"), _side(small, small.metrics, "")]
    console.stage(f"[6/12] deploying {name}@champion on Ray Serve at {s.host} with a new demo API key")
    from aimass import experiments

    earlier = experiments.get("demo", running_only=True, settings=s)
    if earlier is not None:  # a rerun: the last quickstart's canary would refuse the deployment
        experiments.stop("demo", decision="stopped: a new quickstart deploys the demo endpoint", actor="quickstart",
                         settings=s)
        console.stage(f"      the previous run's experiment {earlier.experiment_id} on demo is stopped")
    started, key = not serving.running(settings=s), None
    try:  # a quickstart that fails from here on stops the serving cluster it started (with its scheduler)
        d = serving.deploy(f"{name}@champion", endpoint="demo", settings=s)
        key, made = serving.create_key("demo", settings=s)  # once there is something to call: a failure revokes it
        scheduler = schedule(s)
        curl = serving.curl_example(d, key, user_id=int(i["user_id"].iloc[0]))
        console.stage(f"[7/12] a burst of demo traffic: {traffic_users} users ask {d.url}/recommend and send feedback")
        since = datetime.now(UTC)
        burst = _traffic(d.url, key, i, traffic_users)
        _logged(s, "demo", burst["answers"], since)
        console.stage("[8/12] a drift report of that traffic against the training data (Evidently)")
        from aimass import monitoring, retraining

        report = monitoring.drift("demo", window_s=3600, settings=s)
        console.stage(f"[9/12] retraining on the feedback: a new dataset version, a challenger, the gate "
                      f"(at most {retrain_budget} min)")
        # no second progress bar: the stage line gives its bound, and a demo's output stays one screen
        again = retraining.retrain("demo", reason="manual", progress=False, settings=s, time_budget_min=retrain_budget)
        console.stage("[10/12] a canary split on the demo endpoint (an auto experiment on the feedback) with a shadow "
                      "version, and a second burst of traffic on it")
        canary = _canary(again, name, small, s) + _shadow(again, small, s)
        burst2 = _traffic(d.url, key, i, max(traffic_users // 2, 1), seed=1)
        traffic = serving.traffic("demo", history=3, settings=s)
        skipped = []  # the optional steps: one that fails is said, and the demo built before it keeps serving
        if search:
            console.stage("[11/12] a search index of the demo catalogue (BM25 + MiniLM vectors, int8) built with Ray "
                          "Train, registered as demo-search and deployed at endpoint 'search'")
            try:
                search = _search_index(v.ref, key, ds, s)
            except AimassError as e:
                search = None
                skipped.append(f"search   not built: {e} (--no-search skips it)")
                console.stage(f"      {skipped[-1]}")
        else:
            console.stage("[11/12] no search index (--no-search)")
            search = None
        if auto_budget:
            console.stage(f"[12/12] model search on {v.ref} for {auto_budget:g} min (aimass train auto): baselines, "
                          "neural probes, the best probe for the rest; the best registered as demo-auto")
            try:
                found = training.auto(v.ref, auto_budget, workers=workers, progress=False, settings=s)
                best = models.register(found.best.run_id, "demo-auto", settings=s)
                auto = {"registered": best.ref, "family": found.best.family, "params": found.best.params,
                        "val_ndcg@10": found.best.val_ndcg,
                        # as the leaderboard ranks them: a continued probe is its final candidate's run
                        "candidates": sum(bool(c.run_id) and c.val_ndcg is not None for c in found.leaderboard),
                        "skipped": sum(c.val_ndcg is None for c in found.leaderboard),
                        "run_id": found.best.run_id, "wall_time_s": found.wall_time_s}
            except AimassError as e:
                auto = None
                skipped.append(f"auto     no model search: {e} (--auto-budget 0 skips it)")
                console.stage(f"      {skipped[-1]}")
        else:
            console.stage("[12/12] no model search (--auto-budget 0)")
            auto = None
        panel = _console(s)
    except BaseException as e:
        if started and not _others_served(s) and serving.shutdown(settings=s):  # first: the message below may
            # go to a terminal that hung up
            how = "was interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            console.stage(f"      the quickstart {how}: stopped the serving cluster it started")
        if key is not None:  # never shown: no one holds it (a catalog that failed must not hide the error)
            with contextlib.suppress(Exception):
                serving.revoke_key(made.key_id, settings=s)
        raise
    # the key is in this result alone: one that cannot be written (a full disk, a closed pipe) was never seen, and
    # no one may hold a valid key that no one has
    with _revoked_on_failure(made.key_id, s):
        loop = {"traffic": burst, "traffic_on_split": burst2, "drift": report.model_dump(mode="json"),
                "retrain": again.model_dump(mode="json"),
                "scheduler": scheduler, "canary": canary, "split": traffic.model_dump(mode="json"), "search": search,
                "auto": auto, "console": panel}
        if as_json:
            emit({"dataset": summary, "log": str(console.log_path()), "skipped": skipped, "training": run,
                  "tracking_uri": shown_url(s.tracking_uri),
                  "promotion": promotion, "models": side, "deployment": d.model_dump(mode="json"), "api_key": key,
                  "curl": curl, **loop}, True)
            return
        console.stage(f"logs: {console.log_path()}")
        metrics = ", ".join(f"{label} {r.metrics[k]:.4f}" for k, label in _SHOWN.items() if k in r.metrics)
        console.result("\n".join([
            "",
            f"dataset  {v.ref}: {v.n_rows:,} plays by {v.n_users:,} users of {v.n_items:,} played tracks",
            f"model    {mv.ref} from MLflow run {r.run_id} ({r.epochs} epochs, {r.wall_time_s:.0f} s): {metrics}",
            "",
            *rows(side, list(side[0])),
            *([f"champion unchanged: {promotion['reason']}"] if not promotion["promoted"] else []),
            "",
            f"feedback {burst['events']:,} events stored ({burst['positive']:,} plays and likes) after "
            f"{burst['answers']} answers; each changed that user's next /recommend",
            f"drift    {'DRIFT in ' + ', '.join(report.drifted_columns) if report.drifted else 'no drift'} "
            f"({len(report.drifted_columns)} of {len(report.columns)} columns, {report.n_current} answers): "
            f"{report.html}",
            f"retrain  {again.parent_dataset} + {again.positive:,} positive events -> {again.dataset} -> challenger "
            f"{again.challenger}: gate {retrain_outcome(again)}",
            *[f"         {'pass' if c.passed else 'FAIL'} {c.check}: {c.detail}" for c in again.gate],
            f"         {again.next_step}",
            f"         {scheduler}",
            f"canary   {canary}",
            f"         then {burst2['answers']} answers on the split and {burst2['events']:,} more feedback events",
            "",
            "$ aimass traffic show demo",
            *view_lines(traffic),
            "",
            f"MLflow   {_tool('mlflow')} ui --backend-store-uri {shown_url(s.tracking_uri)} --host 127.0.0.1 "
            "--port 5000",
            f"API      {d.url} (OpenAPI: {d.url}/docs.json)",
            f"API key  {key} (shown once; stored hashed)",
            *([f"search   {search['model']} at {search['url']}: {search['query']!r} -> {', '.join(search['top'])}",
               f"         {search['searches']} demo searches in 3 modes, {search['clicks']} clicks on results"]
              if search else []),
            *([f"auto     {auto['candidates']} candidates trained"
               + (f" ({auto['skipped']} not run: see the leaderboard)" if auto["skipped"] else "")
               + f" in {auto['wall_time_s'] / 60:.1f} min; best {auto['family']} "
               f"(val NDCG@10 {auto['val_ndcg@10']:.4f}) registered as {auto['registered']}; leaderboard: "
               f"{_tool('aimass')} runs show {auto['run_id']}"] if auto else []),
            *skipped,
            "Try it:",
            f"  {curl}",
            *([f"  {search['curl']}"] if search else []),
            f"Stop serving: {_tool('aimass')} deployments shutdown",
            f"console  {panel['url']} (stop: {_tool('aimass')} console --stop)" if panel.get("url")
            else f"console  not started: {panel['error']}",
        ]))


@contextlib.contextmanager
def _revoked_on_failure(key_id: str, s):
    from aimass import serving

    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            serving.revoke_key(key_id, settings=s)
        raise


def _tool(name: str) -> str:
    """How to run this environment's `name` as printed: bare when the shell finds this one, else its path (relative
    to here when it lies below: `make demo` puts nothing on PATH, so a bare `aimass` was "command not found")."""
    import shutil
    import sys
    from pathlib import Path

    mine = Path(sys.executable).parent / name
    found = shutil.which(name)
    if found and Path(found).resolve() == mine.resolve():
        return name
    try:
        return str(mine.relative_to(Path.cwd()))
    except ValueError:
        return str(mine)


def _console(s) -> dict:
    """The operator console, left running for this home like the endpoints; a console that cannot start (its
    port taken) is reported, and the demo it would show is still done."""
    from aimass import dashboard
    from aimass.errors import AimassError

    console.stage(f"starting the operator console on {s.host}:{s.console_port}")
    try:
        info = dashboard.start(s)
    except AimassError as e:
        return {"error": str(e)}
    return {"url": info["url"], "pid": info["pid"]}


def _shadow(again, small, s) -> str:
    """A version that is on neither arm gets a copy of the demo's /recommend traffic (the retrained challenger
    or the int8 child): the console's deployments page compares its lists with the live ones."""
    from aimass import serving

    split = serving.traffic("demo", settings=s).split
    live = [a["ref"] for a in split.arms]
    ref = next((r for r in (again.challenger, small.ref) if r and r not in live), None)
    if ref is None:
        return ""
    serving.set_traffic("demo", [f"{a['ref']}={a['weight']}" for a in split.arms], shadow=ref,
                        experiment_id=split.experiment_id, reason="shadow", actor="quickstart", settings=s)
    return f"; {ref} gets a shadow copy of the traffic"


def _canary(again, name: str, small, s) -> str:
    """Step 10: the retrained challenger's canary when the gate let it out; else the int8 child of the champion
    as the canary (10% of users, an auto experiment the scheduler promotes or rolls back)."""
    from aimass import experiments, serving

    if again.canary:
        return f"{again.challenger} (retrained) serves 10% of users: experiment {again.canary}"
    control = serving.traffic("demo", settings=s).split.arms[0]["ref"]
    e = experiments.start("demo", [f"{control}=90", f"{small.ref}=10"], s.experiment_metric,
                          alpha=s.experiment_alpha, mde=s.experiment_mde, auto=True, actor="quickstart", settings=s,
                          guardrails={"max_p99_ratio": s.guardrail_max_p99_ratio,
                                      "max_error_rate": s.guardrail_max_error_rate})
    return (f"{small.ref} (int8 of {control}) serves 10% of users: experiment {e.experiment_id}, promoted when it "
            f"wins on {e.metric}, rolled back when a guardrail breaks")


def _search_index(dataset: str, key: str, ds, s) -> dict:
    """Step 11: the search family trained on the catalogue's text, deployed, and asked once (a genre word)."""
    import httpx

    from aimass import models, serving, training

    r = training.train("search", dataset, progress=False, settings=s)
    mv = models.register(r.run_id, "demo-search", settings=s)
    d = serving.deploy(mv.ref, endpoint="search", min_replicas=1, max_replicas=1, settings=s)
    query = str(ds.items["genre"].mode().iloc[0]) if "genre" in ds.items.columns else "music"
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {key}"}, trust_env=False) as c:
        r = c.post(f"{d.url}/search", json={"query": query, "k": 3})
        r.raise_for_status()
        answer = r.json()
        asked = _searches(c, d.url, ds)
    return {"model": mv.ref, "url": d.url, "query": query, "top": answer.get("titles", []), **asked,
            "curl": serving.curl_example(d, key, k=5, query=query)}


def _searches(c, url: str, ds) -> dict:
    """Demo users search in each mode (every other one signed in: personalised) and click the first result of
    two searches in three, naming the answer's request_id: the console's search page shows click-through by
    mode from these."""
    import time

    words = [str(w) for w in ds.items["genre"].value_counts().index[:3]] if "genre" in ds.items.columns else \
        ["music"]
    users = ds.interactions["user_id"].drop_duplicates().head(6).tolist()
    searches = clicks = 0
    for j, (word, mode) in enumerate((w, m) for w in words for m in ("bm25", "semantic", "hybrid")):
        user = int(users[j % len(users)])
        body = {"query": word, "k": 5, "mode": mode, **({"user_id": user} if j % 2 else {})}
        r = c.post(f"{url}/search", json=body)
        r.raise_for_status()
        out = r.json()
        searches += 1
        if out["items"] and j % 3 != 2:
            event = {"event_id": f"demo-search-{out['request_id']}", "user_id": user,
                     "item_id": out["items"][0], "type": "click", "timestamp": time.time(),
                     "request_id": out["request_id"]}
            c.post(f"{url}/feedback", json=event).raise_for_status()
            clicks += 1
    return {"searches": searches, "clicks": clicks}


def _side(v, m: dict, prefix: str) -> dict:
    """One row of the parent-vs-int8 table, from the compression's own measurements of both."""
    return {"version": v.ref, "method": v.method, "aliases": ",".join(v.aliases) or "-",
            "size_bytes": int(m[f"{prefix}size_bytes"]), "test_ndcg@10": round(m[f"{prefix}test_ndcg_at_10"], 4),
            "p50_b1_ms": round(m[f"{prefix}latency_b1_p50_ms"], 2),
            "p99_b1_ms": round(m[f"{prefix}latency_b1_p99_ms"], 2),
            "p50_b64_ms": round(m[f"{prefix}latency_b64_p50_ms"], 2)}


def _others_served(s) -> bool:
    """Whether endpoints other than the quickstart's own were deployed on its cluster meanwhile (kept running),
    one still starting included (its record is written once it runs)."""
    from aimass import serving

    try:
        live = serving.applications(settings=s)
    except Exception:  # the cluster is away: nothing to keep
        return False
    return bool({a.removesuffix(".preflight") for a in live} - {"demo", "search"})


def _logged(s, endpoint: str, answers: int, since, timeout_s: float = 10.0) -> None:
    """Until the endpoint's answer log holds `answers` served from `since` on (a rerun's log holds the earlier
    runs' too): a replica writes it every quarter second, and a report made at once could miss the burst's last
    answers (or all of them, when the burst took less than that)."""
    import time

    from aimass.events import ServedLog

    log, deadline = ServedLog(s), time.monotonic() + timeout_s
    while (len(log.frame(endpoint, start=since, columns=["request_id"])) < answers
           and time.monotonic() < deadline):
        time.sleep(0.1)


def _traffic(url: str, key: str, interactions, n_users: int, seed: int = 0) -> dict:
    """Demo users ask for recommendations and react: every shown item is an impression; some are played
    (30-300 s), some skipped, a few liked; each user's events go back in one batch naming the answer's
    request_id. Half of them also play something they found elsewhere (organic, no request_id): feedback that
    only repeats the served lists would teach a retrained model nothing new. A tenth of the users are new:
    their feedback alone makes their next answer personal."""
    import time

    import httpx
    import numpy as np

    rng = np.random.default_rng(seed)
    counts = interactions["item_id"].value_counts()
    catalogue, weight = counts.index.to_numpy(), (counts / counts.sum()).to_numpy()
    known = interactions["user_id"].drop_duplicates().to_numpy()
    users = rng.choice(known, size=min(n_users, len(known)), replace=False).tolist()
    users += [int(known.max()) + 1 + j for j in range(max(1, n_users // 10))]
    answers = stored = positive = 0
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {key}"}, trust_env=False) as c:
        for u in users:
            r = c.post(f"{url}/recommend", json={"user_id": int(u), "k": 10})
            r.raise_for_status()
            out = r.json()
            answers += 1
            now = time.time()
            batch = [{"event_id": f"demo-{out['request_id']}-{it}-imp", "user_id": int(u), "item_id": it,
                      "type": "impression", "timestamp": now, "request_id": out["request_id"]} for it in out["items"]]
            for it in out["items"][:5]:
                roll = rng.random()
                if roll < 0.35:
                    kind, value = ("like", None) if roll < 0.05 else ("play", float(rng.integers(30, 300)))
                    positive += 1
                elif roll < 0.5:
                    kind, value = "skip", float(rng.integers(1, 15))
                else:
                    continue
                batch.append({"event_id": f"demo-{out['request_id']}-{it}-{kind}", "user_id": int(u), "item_id": it,
                              "type": kind, "timestamp": now, "value": value, "request_id": out["request_id"]})
            if rng.random() < 0.5:
                it = int(rng.choice(catalogue, p=weight))
                batch.append({"event_id": f"demo-{out['request_id']}-{it}-organic", "user_id": int(u),
                              "item_id": it, "type": "play", "timestamp": now, "value": float(rng.integers(30, 300))})
                positive += 1
            ack = c.post(f"{url}/feedback", json={"events": batch})
            ack.raise_for_status()
            stored += ack.json()["stored"]
    return {"users": len(users), "answers": answers, "events": stored, "positive": positive}
