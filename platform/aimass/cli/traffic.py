"""`aimass traffic set|show` and `aimass rollback`: which registered versions answer an endpoint, in what
shares (sticky per user), with an optional shadow that gets a copy of the traffic off the request path. A
change is applied in two phases (every replica loads every arm, then all switch), so a version that does not
load leaves the split in force untouched."""
from __future__ import annotations

import re

import typer

from aimass.cli._common import JSON, emit, rows, state

app = typer.Typer(no_args_is_help=True)
_ARM = re.compile(r"^(?P<ref>[^=\s,]+)=(?P<weight>\d+)$")
_DELAY = re.compile(r"^(?P<ref>[^=\s,]+)=(?P<ms>\d+(?:\.\d+)?)$")


def actor() -> str:
    """Who changes the traffic, as recorded in the split's history: the OS user name."""
    import getpass

    try:
        return getpass.getuser() or "cli"
    except Exception:  # no user name in the environment nor the password database (some containers)
        return "cli"


def arm_specs(specs: list[str]) -> list[str]:
    """`["demo/3=90", "demo/4=10"]` checked as REF=WEIGHT (a whole percent, 0-100) before anything is looked
    up, so that a typo is refused at once; a value may also hold several, comma-separated."""
    from aimass.errors import InvalidInputError

    out = []
    for spec in (part.strip() for s in specs for part in s.split(",") if part.strip()):
        m = _ARM.match(spec)
        if not m or int(m["weight"]) > 100:
            raise InvalidInputError(f"invalid arm {spec!r}: write REF=WEIGHT with REF a model version (NAME/VERSION, "
                                    "NAME@ALIAS or NAME) and WEIGHT a whole percent 0-100, e.g. demo-sasrec/3=90")
        out.append(f"{m['ref']}={int(m['weight'])}")
    if not out:
        raise InvalidInputError("a split needs at least one arm: REF=WEIGHT, e.g. demo-sasrec/3=100")
    return out


def faults(delays: list[str] | None) -> dict[str, dict]:
    """`--delay REF=MS` values as the split's fault injection, {ref: {"delay_ms": ms}}, refs resolved the way
    the arms' are (an alias or a bare name names the version it points at now)."""
    from aimass.errors import InvalidInputError

    if not delays:
        return {}
    out: dict[str, dict] = {}
    for spec in (part.strip() for s in delays for part in s.split(",") if part.strip()):
        m = _DELAY.match(spec)
        if not m:
            raise InvalidInputError(f"invalid delay {spec!r}: write REF=MILLISECONDS, e.g. demo-sasrec/4=250")
        out[m["ref"]] = {"delay_ms": float(m["ms"])}
    return out


def _resolve_faults(endpoint: str, found: dict[str, dict]) -> dict[str, dict]:
    """The faults keyed by NAME/VERSION (what the SDK matches against the resolved arms); the endpoint is checked
    first so that a missing deployment is named before a missing model."""
    if not found:
        return {}
    from aimass import registry, serving

    serving.check_deployed(endpoint, settings=state.settings)
    return {registry.get(ref, settings=state.settings).ref: f for ref, f in found.items()}


def describe(split) -> str:
    """A split in a few words: arms, shadow, faults, experiment id."""
    if split is None:
        return "no split recorded"
    arms = ", ".join(f"{a['ref']}={a['weight']}" for a in split.arms)
    shadow = f"; shadow {split.shadow}" if split.shadow else ""
    drill = "".join(f"; drill: {ref} delayed {f.get('delay_ms', 0):g} ms" for ref, f in (split.faults or {}).items())
    return f"{arms}{shadow}{drill}; experiment {split.experiment_id} (split #{split.id}, {split.state})"


def _stale_experiment(endpoint: str, split) -> str:
    """A warning when the endpoint's running experiment no longer gets traffic: the split in force now has
    another experiment id (other arms, or a rollback), so the experiment collects nothing more."""
    from aimass import experiments

    e = experiments.get(endpoint, running_only=True, settings=state.settings)
    if e is None or split is None or e.experiment_id == split.experiment_id:
        return ""
    return (f"; warning: experiment {e.experiment_id} is still running but no longer gets traffic (stop it: "
            f"aimass experiments stop {endpoint})")


def _last_line(text: str | None, width: int = 120) -> str:
    """The gist of a stored error (a traceback's last line), short enough for a table cell."""
    lines = (text or "").strip().splitlines()
    return lines[-1][:width] if lines else ""


def _when(t) -> str:
    return "-" if t is None else f"{t:%Y-%m-%d %H:%M:%S}"


@app.command("set")
def set_(
    endpoint: str = typer.Argument(..., help="A deployed endpoint (aimass deployments list)"),
    arms: list[str] = typer.Argument(..., help="REF=WEIGHT ... with weights summing to 100, e.g. demo-sasrec/3=90 "
                                               "demo-sasrec/4=10 (put a canary last: raising its weight later keeps "
                                               "its users)"),
    shadow: str = typer.Option(None, "--shadow", help="A version that gets a copy of every /recommend off the "
                                                      "request path; its answers are logged, never returned"),
    delay: list[str] = typer.Option(None, "--delay", metavar="REF=MS",
                                    help="Fault-injection drill: every answer of arm REF waits MS milliseconds "
                                         "first (to rehearse a latency guardrail); repeat per arm"),
    as_json: bool = JSON,
):
    """Split ENDPOINT's traffic across model versions. Returns once every replica has loaded every arm and
    switched; a version that fails to load is reported and the split in force stays. Prints one line: the
    split in force (the split as JSON with --json)."""
    from aimass import serving

    specs, found = arm_specs(arms), faults(delay)
    split = serving.set_traffic(endpoint, specs, shadow, faults=_resolve_faults(endpoint, found), actor=actor(),
                                settings=state.settings)
    emit(split, as_json, None if as_json else [f"traffic of {endpoint}: {describe(split)}"
                                               + _stale_experiment(endpoint, split)])


@app.command()
def show(endpoint: str = typer.Argument(..., help="A deployed endpoint"),
         history: int = typer.Option(10, "--history", "-n", min=0, help="How many recent changes to list"),
         as_json: bool = JSON):
    """The split in force (arms and weights, shadow, experiment id), each replica's state for it, a change
    being applied now if any, then the recent changes, newest first."""
    from aimass import serving

    v = serving.traffic(endpoint, history=history, settings=state.settings)
    emit(v, as_json, None if as_json else view_lines(v))


def view_lines(v) -> list[str]:
    """`aimass traffic show`'s text of a TrafficView (the quickstart prints it too)."""
    endpoint, s = v.endpoint, v.split
    if s is None:
        lines = [f"{endpoint}: no split recorded (it serves what it was deployed with)"]
    else:
        lines = [f"{endpoint}: split #{s.id} in force since {_when(s.decided_at or s.created_at)} UTC "
                 f"({s.reason or 'set'}, by {s.actor})",
                 *("  " + x for x in rows([{"arm": a["ref"], "weight": f"{a['weight']}%",
                                             "drill": (f"+{s.faults[a['ref']].get('delay_ms', 0):g} ms"
                                                       if a["ref"] in (s.faults or {}) else "")}
                                            for a in s.arms], ["arm", "weight"] + (["drill"] if s.faults else []))),
                 f"shadow: {s.shadow or 'none'}",
                 f"experiment: {s.experiment_id}"]
        reps = [{"replica": r["replica"], "state": r["state"], "at": _when(r.get("at")),
                 "error": _last_line(r.get("error"))}
                for r in v.replicas]
        lines += (["replicas:", *("  " + x for x in rows(reps, ["replica", "state", "at", "error"]))] if reps
                  else ["replicas: none has reported this split (none running, or deployed with it)"])
    if v.pending is not None:
        p = v.pending
        lines.append(f"being applied: split #{p.id} since {_when(p.created_at)} UTC: "
                     + ", ".join(f"{a['ref']}={a['weight']}" for a in p.arms) + f" ({p.reason}, by {p.actor})")
    hist = [{"id": f"#{h.id}", "when": _when(h.created_at), "state": h.state,
             "arms": " ".join(f"{a['ref']}={a['weight']}" for a in h.arms) + (f" shadow {h.shadow}" if h.shadow
                                                                               else ""),
             "reason": h.reason, "actor": h.actor, "error": _last_line(h.error)} for h in v.history]
    if hist:
        lines += ["", "history (UTC, newest first):",
                  *rows(hist, ["id", "when", "state", "arms", "reason", "actor", "error"])]
    return lines


def rollback(endpoint: str = typer.Argument(..., help="A deployed endpoint"), as_json: bool = JSON):
    """Restore ENDPOINT's previous traffic split (its arms, shadow and user assignment), applied like any
    change: the current split stays if a replica cannot load it. Prints one line: what is in force now."""
    from aimass import serving

    split = serving.rollback(endpoint, actor=actor(), settings=state.settings)
    emit(split, as_json, None if as_json else [f"rolled back {endpoint}: now {describe(split)}"
                                               + _stale_experiment(endpoint, split)])
