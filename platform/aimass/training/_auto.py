"""Model search on a budget, as Gorse searches its models on a schedule: ``aimass train auto --dataset D
--time-budget M``.

1. Cheap strong baselines, one pass each: popularity, item-kNN (with its default shrink, then without it when
   the first pass was cheap), EASE (listed as skipped, with the limit or the estimate, when the data exceeds its
   size limit or this machine would take longer than ``EASE_SHARE`` of the time left).
2. Short probes of the neural families (SASRec, two-tower, and Mult-VAE unless EASE's baseline showed that a
   bag of items trails the history's order here) with their data-adapted defaults, plus one SASRec variant (the
   other density class's width and dropout): the small search. Each probe gets ``PROBE_SHARE`` of what the
   baselines left.
3. A second round when two probes validate close together and the budget is long (``_round2``): both
   continue from their checkpoints for ``ROUND2_SHARE`` of what is left each, so that the family which ends
   best is not lost to the one which learns fastest.
4. The rest of the budget goes to the candidate that validated best: it continues from its checkpoint, in its
   probe's run, with a schedule that restarts warm and ends with the budget.

Every choice is made on validation NDCG@10; test figures are reported, never used to choose. Every
baseline and probe is its own MLflow run (a continuation goes on in its probe's run), tagged with the
search's id, and the winner's run holds the whole leaderboard (``leaderboard.json``), so the version
registered from it carries it.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
import uuid

from aimass.errors import BackendError, InvalidInputError
from aimass.settings import Settings, default_settings, error_line
from aimass.training import MAX_VAL_USERS

MIN_BUDGET_MIN = 1.0  # the baselines and one short probe of each neural family need about this much
# item-kNN twice: its default shrinks the similarity of pairs among rare items (better on every real dataset
# measured), and without it won on a generated catalogue whose rare pairs are real groups. The second pass is
# run only when the first took at most SECOND_PASS_SHARE of the budget (seconds, against minutes on 100,000
# users, which the probes would lose)
BASELINES = (("popularity", {}), ("itemknn", {}), ("itemknn", {"shrink": 0}), ("ease", {}))
SECOND_PASS_SHARE = 0.10
# EASE's one pass grows as n_items^3 and cannot stop early (18,121 items: 48 s on 2 cores, most of a 1-minute
# search): it runs only when this machine's estimate fits EASE_SHARE of the time left, else it is listed as
# skipped with the estimate
EASE_SHARE = 0.25
PROBE_SHARE = 0.08
# the second round (_round2): each of the two contenders gets this share of what the probes left, when the
# runner-up is within ROUND2_CLOSE of the best (validation NDCG@10) and the share is at least ROUND2_MIN_MIN
ROUND2_SHARE = 0.16
ROUND2_CLOSE = 0.8
ROUND2_MIN_MIN = 1.0
STOP_METRIC = "best_val_ndcg@10"
# Every candidate is tested after it trains (reported, never used to choose): on all users a count model's test
# over 150,000 users and 135,000 items took 3.6 minutes, more than a 5-minute search's baselines could spare.
# Without max_test_users, candidates are tested on a seeded sample of this many users (all where fewer), and of
# at most AUTO_TEST_CELLS users x items, but never fewer users than validation reads (2,048 by default): on a
# million items a SASRec probe trained for 6 seconds took 6 minutes to test on 20,000 users, and a 5-minute
# search ran for 9.8 minutes
AUTO_TEST_USERS = 20_000
AUTO_TEST_CELLS = 2 * 10**9


def auto_test_users(n_items: int, max_val_users: int | None) -> int:
    """The test sample of a search without max_test_users: AUTO_TEST_USERS, fewer on a large catalogue."""
    floor = max_val_users or MAX_VAL_USERS
    return int(min(AUTO_TEST_USERS, max(floor, AUTO_TEST_CELLS // max(n_items, 1))))


@dataclasses.dataclass
class Candidate:
    family: str
    params: dict
    stage: str                      # "baseline", "probe", "round 2" or "final"
    run_id: str | None = None
    val_ndcg: float | None = None   # best_val_ndcg@10: what the search ranks on
    val_recall: float | None = None
    test_ndcg: float | None = None
    test_recall: float | None = None
    budget_min: float | None = None
    wall_time_s: float = 0.0
    stop_reason: str = ""
    note: str = ""                  # the run's budget note: it peaked early in its budget
    epochs: int = 0                 # epochs trained so far (a continuation counts its predecessors')
    skipped: str | None = None      # why it did not run, or how it failed


@dataclasses.dataclass
class AutoResult:
    search_id: str
    dataset: str
    best: Candidate
    leaderboard: list[Candidate]
    wall_time_s: float


def check_auto_budget(time_budget_min: float | None) -> None:
    if time_budget_min is None or not math.isfinite(time_budget_min) or time_budget_min < MIN_BUDGET_MIN:
        raise InvalidInputError(f"auto needs a time budget of at least {MIN_BUDGET_MIN:g} minute(s) (on a small "
                                "catalogue, the baselines and a short probe of each neural family; a large one needs "
                                f"more), got {time_budget_min}")


def auto(dataset: str, time_budget_min: float, *, workers: int = 1, max_val_users: int | None = MAX_VAL_USERS,
         max_test_users: int | None = None, epochs: int | None = None, progress: bool = True,
         settings: Settings | None = None) -> AutoResult:
    """Search the zoo for ``dataset`` within ``time_budget_min`` minutes of wall time; returns the
    leaderboard, best first. ``epochs`` caps the neural candidates (for quick checks). Test figures are on
    ``max_test_users`` seeded users (default :func:`auto_test_users`; all users where fewer)."""
    from aimass import console, datasets
    from aimass.training import EVAL_SEED, _prepare, check_job, resume, train

    s = settings or default_settings()
    check_auto_budget(time_budget_min)
    if epochs is not None and epochs < 1:
        raise InvalidInputError(f"epochs must be at least 1, got {epochs}")
    check_job(s, workers, max_test_users, max_val_users)  # refused once here, not as a skipped candidate each
    ds = datasets.load(dataset, settings=s)
    data, _ = _prepare(ds, max_val_users, EVAL_SEED)  # too few users for validation and test: refused before any run
    if max_test_users is None:
        max_test_users = auto_test_users(data["n_items"], max_val_users)
    started, search_id = time.time(), uuid.uuid4().hex[:12]
    deadline = started + time_budget_min * 60
    board: list[Candidate] = []
    # one local worker asked for: every candidate trains in this process (Ray Train's local mode, the same loop).
    # A worker process of its own buys a one-pass baseline nothing, and a probe no more than the same two cores,
    # while its start took 10-27 s of each candidate on 2 cores: a 1-minute search probed one SASRec for 20 s,
    # 16 of them its worker's start, and had no time left for the other probes
    local = 0 if workers == 1 and not s.ray_address else workers
    common = {"workers": local, "max_val_users": max_val_users, "max_test_users": max_test_users,
              "progress": progress, "settings": s}

    def named(c: Candidate) -> str:
        return f"auto [{len(board) + 1}] {c.stage} {c.family}" + (f" {json.dumps(c.params)}" if c.params else "")

    def skip(c: Candidate, why: str) -> None:  # a line too: the numbers on the screen are the leaderboard's
        c.skipped = why
        console.stage(f"{named(c)}: {why if why.startswith('not ') else 'not run: ' + why}")
        board.append(c)

    def run(c: Candidate, resume_of: Candidate | None = None) -> Candidate:
        console.stage(named(c) + (f" for {c.budget_min:.1f} min" if c.budget_min else ""))
        t0 = time.time()
        try:
            if resume_of is not None:  # the candidate goes on from its checkpoint, in the same run
                r = resume(resume_of.run_id, time_budget_min=c.budget_min,
                           epochs=resume_of.epochs + epochs if epochs else None, progress=progress, settings=s)
            elif c.stage == "baseline":
                r = train(c.family, ds.info.ref, c.params, time_budget_min=c.budget_min, **common)
            else:
                r = train(c.family, ds.info.ref, c.params, time_budget_min=c.budget_min, epochs=epochs, **common)
        except InvalidInputError as e:  # a family's limit (EASE's catalogue size, ...): not for this data
            c.skipped = str(e)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # one candidate failing must not lose the others' work
            c.skipped = f"failed: {error_line(e)}"
        else:
            m = r.metrics
            c.run_id, c.stop_reason, c.epochs, c.note = r.run_id, r.stop_reason, r.epochs, r.note
            c.val_ndcg, c.val_recall = m.get(STOP_METRIC), m.get("best_val_recall@10")
            c.test_ndcg, c.test_recall = m.get("test_ndcg@10"), m.get("test_recall@10")
        c.wall_time_s = round(time.time() - t0, 1)
        board.append(c)
        return c

    for family, params in BASELINES:
        if family == "ease":  # its own checks refuse before any work, naming the reason: its size limit, or a
            # pass longer than its share, checked here (a budget given to the job would be replayed by every
            # retrain of the model, against a grown catalogue on a busy serving machine)
            if why := _ease_too_slow(s, data["n_items"], EASE_SHARE * (deadline - time.time())):
                skip(Candidate(family, dict(params), "baseline"), why)
            else:
                run(Candidate(family, dict(params), "baseline"))
        elif time.time() >= deadline:
            skip(Candidate(family, dict(params), "baseline"), "the time budget was spent")
        elif params and (why := _second_pass_skipped(board, family, time_budget_min)):
            skip(Candidate(family, dict(params), "baseline"), why)
        else:
            run(Candidate(family, dict(params), "baseline"))
    probes = [Candidate("sasrec", {}, "probe"), Candidate("sasrec", _sasrec_variant(data), "probe"),
              Candidate("two-tower", {}, "probe")]
    bag = _bag_of_items_evidence(board)
    if bag is None:
        probes.append(Candidate("mult-vae", {}, "probe"))
    else:
        skip(Candidate("mult-vae", {}, "probe"), bag)
    share = PROBE_SHARE * max(0.0, deadline - time.time()) / 60
    # a job's time beyond its training budget (start, final evaluation, logging): a baseline is nearly all that
    ran = [c.wall_time_s for c in board if c.run_id]
    overhead = min(ran) if ran else 0.0
    for c in probes:
        if share < 0.05 or deadline - time.time() < 60 * share + overhead:
            skip(c, "the time budget was spent")
            continue
        c.budget_min = round(share, 2)
        run(c)
        if c.run_id:
            overhead = max(overhead, c.wall_time_s - 60 * c.budget_min)
    ran = [c for c in probes if c.val_ndcg is not None]
    extra = ROUND2_SHARE * max(0.0, deadline - time.time()) / 60
    for c in _round2(ran, extra):  # each probe's time counts towards what it becomes (a warm restart)
        if deadline - time.time() < 60 * extra + overhead:  # said: its figure is a shorter run's than the other's
            c.note = "picked for round 2, not continued: the budget left was too short"
            continue
        more = run(Candidate(c.family, dict(c.params), "round 2", budget_min=round(c.budget_min + extra, 2)),
                   resume_of=c)
        if more.run_id:
            ran[ran.index(c)] = more
            c.run_id, c.skipped = None, f"continued in round 2 (run {more.run_id})"
            overhead = max(overhead, more.wall_time_s - 60 * extra)
        else:
            _lost(c, more, ran, _finished(s, c.run_id))
    # the budget bounds training, as a single job's does: the final model's evaluation and logging follow it
    left = (deadline - time.time()) / 60
    if ran and left >= 0.1:
        # the best continues rather than starting over: its time counts towards the final model (a warm restart
        # of the schedule, which then ends with the budget)
        top = max(ran, key=lambda c: c.val_ndcg)
        final = run(Candidate(top.family, dict(top.params), "final", budget_min=round(top.budget_min + left, 2)),
                    resume_of=top)
        if final.run_id:
            top.run_id, top.skipped = None, f"continued as the final candidate (run {final.run_id})"
        else:
            _lost(top, final, ran, _finished(s, top.run_id))
    done = sorted((c for c in board if c.val_ndcg is not None and c.run_id), key=lambda c: -c.val_ndcg)
    if not done:
        why = "; ".join(f"{c.family}: {c.skipped}" for c in board)
        if any((c.skipped or "").startswith("failed") for c in board):  # not the data's fault: see the log
            raise BackendError(f"no family could train on {ds.info.ref}: {why}")
        raise InvalidInputError(f"no family could train on {ds.info.ref}: {why}")
    leaderboard = done + [c for c in board if c not in done]
    try:
        _record(s, search_id, ds.info.ref, leaderboard)
    except Exception as e:  # the search's result stands; only its record in the runs is incomplete
        console.stage(f"auto: the leaderboard could not be written to run {done[0].run_id}: {error_line(e)}")
    return AutoResult(search_id=search_id, dataset=ds.info.ref, best=done[0], leaderboard=leaderboard,
                      wall_time_s=round(time.time() - started, 1))


def _ease_too_slow(s: Settings, n_items: int, share_s: float) -> str | None:
    """Why EASE's one pass does not fit `share_s` on this machine (training._check_time's refusal), or None."""
    from aimass.training import _check_time
    from aimass.zoo import family_class

    ease = family_class("ease")()
    # a joined cluster's nodes are not timed from here; a catalogue past EASE's size limit is refused by its job,
    # naming the limit and the memory, which says more than a time
    if s.ray_address or n_items > ease.Config().max_items:
        return None
    try:
        _check_time(ease, None, n_items, max(share_s, 0.0))
    except InvalidInputError as e:
        return str(e)
    return None


def _finished(s: Settings, run_id: str) -> bool:
    from aimass.tracking import client

    try:
        return client(s).get_run(run_id).info.status == "FINISHED"
    except Exception:  # unreadable: not a run to rank
        return False


def _lost(c: Candidate, continuation: Candidate, ran: list[Candidate], intact: bool) -> None:
    """A continuation that failed went on in ``c``'s run, which it marked failed and whose checkpoints it may
    have moved past ``c``'s model: ``c`` is no longer a model the search can rank or register. One refused
    before it started (``intact``: the run is still FINISHED) left the run as it was: ``c`` stays, as it is."""
    if intact:
        c.note = "; ".join(filter(None, (c.note, f"not continued: {continuation.skipped}")))
        return
    ran.remove(c)
    c.run_id, c.skipped = None, f"its continuation failed, in its run: {continuation.skipped}"


def _round2(probes: list[Candidate], extra_min: float) -> list[Candidate]:
    """The probes that go on for ``extra_min`` more minutes each before the final choice: the best two, when
    the runner-up validated within ``ROUND2_CLOSE`` of the best and the remaining budget is long enough for
    their learning curves to cross. A short probe favours the family that learns fastest: on ml1m, two-tower
    led SASRec after 3 minutes (0.1669 vs 0.1579, and 0.1417 in another session: hence a 20% margin) and
    stayed at 0.1669 over 12, where SASRec goes on to 0.20. The loser's round is the search's only cost.
    A second round shorter than ``ROUND2_MIN_MIN`` would spend much of itself on a job's fixed overhead."""
    ranked = sorted(probes, key=lambda c: -c.val_ndcg)
    if len(ranked) < 2 or extra_min < ROUND2_MIN_MIN or ranked[1].val_ndcg < ROUND2_CLOSE * ranked[0].val_ndcg:
        return []
    return ranked[:2]


def _second_pass_skipped(board: list[Candidate], family: str, budget_min: float) -> str | None:
    """Why a family's second baseline is not run (its first pass took more than SECOND_PASS_SHARE of the
    budget), or None to run it."""
    first = next((c for c in board if c.family == family and c.stage == "baseline"), None)
    if first is None or first.wall_time_s is None or first.wall_time_s <= SECOND_PASS_SHARE * budget_min * 60:
        return None
    return (f"not run: the first {family} job took {first.wall_time_s:.0f} s (its pass, test and logging), over "
            f"{SECOND_PASS_SHARE:.0%} of the budget")


def _bag_of_items_evidence(board: list[Candidate]) -> str | None:
    """Why Mult-VAE is not worth a probe here, or None to probe it. Mult-VAE and EASE model the same thing, a
    user's items as a bag, and EASE is its closed-form linear counterpart: where EASE validates below item-kNN's
    sequence windows, the order carries the signal and a bag model trails too (in the robustness table, where EASE
    trailed item-kNN, on ml1m and on Last.fm's former artist-id order, Mult-VAE trailed it by about as much; on
    Last.fm's random order EASE leads item-kNN, and Mult-VAE is probed). A probe
    costs a share of the budget that the final candidate then lacks. When EASE could not run (its size limit),
    there is no evidence either way, and Mult-VAE, which scales past that limit, is probed."""
    got: dict[str, float] = {}  # each family's best baseline (item-kNN runs with and without shrink)
    for c in board:
        if c.stage == "baseline" and c.val_ndcg is not None:
            got[c.family] = max(got.get(c.family, c.val_ndcg), c.val_ndcg)
    if "ease" not in got or "itemknn" not in got or got["ease"] >= got["itemknn"]:
        return None
    return (f"not probed: EASE, the bag-of-items baseline, validated below item-kNN (NDCG@10 {got['ease']:.4f} "
            f"vs {got['itemknn']:.4f}), so the order of the history carries the signal")


def _sasrec_variant(data: dict) -> dict:
    """The other density class's width and dropout than the data-adapted defaults chose (aimass.zoo.sasrec)."""
    from aimass.zoo.sasrec import SASRecConfig

    adapted = SASRecConfig().resolve(data["n_items"], [len(x) for x in data["train"]])
    return {"dim": 64, "dropout": 0.5} if adapted.dim == 128 else {"dim": 128, "dropout": 0.3}


def _record(s: Settings, search_id: str, dataset: str, leaderboard: list[Candidate]) -> None:
    """Every candidate run gets the search's id and its rank; the winner's run the whole leaderboard."""
    from aimass.tracking import TAG, client

    c = client(s)
    rows = [dataclasses.asdict(x) for x in leaderboard]
    for rank, x in enumerate(leaderboard, 1):
        if x.run_id:
            c.set_tag(x.run_id, f"{TAG}auto.search_id", search_id)
            c.set_tag(x.run_id, f"{TAG}auto.rank", str(rank))
    c.log_text(leaderboard[0].run_id, json.dumps({"search_id": search_id, "dataset": dataset,
                                                   "leaderboard": rows}, indent=2), "leaderboard.json")
