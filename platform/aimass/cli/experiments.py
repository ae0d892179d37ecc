"""`aimass experiments start|show|stop`: A/B experiments on an endpoint's traffic. `start` splits the endpoint
across the arms under a new experiment id (the first arm is the control) and records how to judge them: a rate
metric over the served answers, an always-valid sequential test (look as often as you like) and guardrails on
p99 latency and error rate. `show` is one look; `stop` ends it, optionally promoting an arm."""
from __future__ import annotations

import typer

from aimass.cli._common import JSON, emit, rows, state
from aimass.cli.traffic import _resolve_faults, actor, arm_specs, faults

app = typer.Typer(no_args_is_help=True)


def _guardrails(max_p99_ratio: float | None, max_error_rate: float | None) -> dict:
    from aimass.errors import InvalidInputError

    g = {}
    if max_p99_ratio is not None:
        if not max_p99_ratio > 0:
            raise InvalidInputError(f"--max-p99-ratio must be positive (a treatment's p99 latency over the "
                                    f"control's, e.g. 1.5), got {max_p99_ratio:g}")
        g["max_p99_ratio"] = max_p99_ratio
    if max_error_rate is not None:
        if not 0 <= max_error_rate <= 1:
            raise InvalidInputError(f"--max-error-rate must be a share between 0 and 1 (e.g. 0.01 for 1%), got "
                                    f"{max_error_rate:g}")
        g["max_error_rate"] = max_error_rate
    return g


def _rails(g: dict) -> str:
    from aimass.experiments import GUARDRAILS

    g = {**GUARDRAILS, **(g or {})}
    return (f"p99 <= {g['max_p99_ratio']:g}x the control's (or within {g['min_p99_excess_ms']:g} ms of it), error "
            f"rate <= the control's + {g['max_error_rate']:.2%} (or under 3 failed requests); checked once an arm "
            f"and the control each have {g['min_answers']} requests (answers and failures)")


@app.command()
def start(
    endpoint: str = typer.Argument(..., help="A deployed endpoint (aimass deployments list)"),
    arms: list[str] = typer.Option(..., "--arms", metavar="REF=WEIGHT",
                                   help="An arm and its share in percent; the first is the control. Repeat the "
                                        "option (--arms A=50 --arms B=50) or comma-separate (--arms A=50,B=50): "
                                        "an option takes one value each time"),
    metric: str = typer.Option("positive_rate", "--metric",
                               help="positive_rate (any positive event) or <event type>_rate, e.g. play_rate: the "
                                    "share of an arm's users with an answer followed by such an event naming its "
                                    "request_id; on a negative type (e.g. skip_rate) the lower rate wins"),
    alpha: float = typer.Option(0.05, "--alpha", help="False-positive rate of the whole experiment"),
    mde: float = typer.Option(0.02, "--mde", help="Smallest difference of the rate worth detecting, absolute "
                                                  "(0.02 = two points)"),
    min_samples: int = typer.Option(100, "--min-samples", help="Users per arm before any call"),
    auto: bool = typer.Option(False, "--auto", help="Canary: the scheduler promotes a winner whose guardrails "
                                                    "hold and rolls back on a broken guardrail or a winning "
                                                    "control"),
    max_p99_ratio: float = typer.Option(None, "--max-p99-ratio",
                                        help="Guardrail: a treatment's p99 latency at most X times the control's "
                                             "(default 1.5; a p99 within 10 ms of the control's always passes); "
                                             "judged once the treatment and the control each have 50 requests "
                                             "(answers and failures)"),
    max_error_rate: float = typer.Option(None, "--max-error-rate",
                                         help="Guardrail: a treatment's share of failed requests at most Y "
                                              "above the control's (default 0.01); judged once the treatment and "
                                              "the control each have 50 requests (answers and failures), and "
                                              "broken only by 3 failed requests or more"),
    shadow: str = typer.Option(None, "--shadow", help="A version that gets a copy of the traffic, never answers"),
    delay: list[str] = typer.Option(None, "--delay", metavar="REF=MS",
                                    help="Fault-injection drill: every answer of arm REF waits MS milliseconds "
                                         "(rehearses the p99 guardrail)"),
    as_json: bool = JSON,
):
    """Start an A/B experiment: split ENDPOINT across the arms under a new experiment id (users are reassigned
    once, then stick to their arm) and record how to judge them. Prints one line (the experiment as JSON with
    --json)."""
    from aimass import experiments

    specs, found, rails = arm_specs(arms), faults(delay), _guardrails(max_p99_ratio, max_error_rate)
    e = experiments.start(endpoint, specs, metric, alpha=alpha, mde=mde, min_samples=min_samples,
                          guardrails=rails or None, auto=auto, shadow=shadow,
                          faults=_resolve_faults(endpoint, found), actor=actor(), settings=state.settings)
    control, *treatments = (f"{a['ref']}={a['weight']}" for a in e.arms)
    then = ("auto: a winner with its guardrails held is promoted, a broken guardrail or a winning control rolls "
            "back" if e.auto else f"end it with aimass experiments stop {endpoint} [--promote ARM]")
    emit(e, as_json, [f"started experiment {e.experiment_id} on {endpoint}: control {control} vs "
                      f"{', '.join(treatments) or 'nothing'}; metric {e.metric}, alpha {e.alpha:g}, mde {e.mde:g}, "
                      f"at least {e.min_samples} users per arm; guardrails: {_rails(e.guardrails)}; {then}; "
                      f"watch: aimass experiments show {endpoint}"])


def _rate(rate: float, interval) -> str:
    return f"{rate:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _when(t) -> str:
    return "-" if t is None else f"{t:%Y-%m-%d %H:%M:%S}"


def view_lines(v) -> list[str]:
    """An experiment view as a header, a table of arms, a table of comparisons, the guardrails."""
    e = v.experiment
    head = (f"experiment {e.experiment_id} on {e.endpoint}: running since {_when(e.started_at)} UTC"
            + (f"; {e.decision}" if e.decision else "")  # a running one has a decision only while being stopped
            if e.state == "running" else
            f"experiment {e.experiment_id} on {e.endpoint}: stopped {_when(e.stopped_at)} UTC "
            f"(ran from {_when(e.started_at)}): {e.decision or 'stopped'}")
    lines = [head, f"metric {e.metric}" + ("" if v.higher_is_better else " (lower wins)")
                   + f", alpha {e.alpha:g}, mde {e.mde:g}, at least {e.min_samples} users per arm"
                   + ("; auto (canary)" if e.auto else "")]
    arms = [{"arm": a.arm + (" (control)" if i == 0 else ""), "weight": f"{a.weight}%", "users": a.users,
             "answers": a.answers, "converted": a.successes, "rate [interval]": _rate(a.rate, a.interval),
             "errors": f"{a.errors} ({a.error_rate:.1%})", "p50 ms": _ms(a.latency_p50_ms),
             "p99 ms": _ms(a.latency_p99_ms)} for i, a in enumerate(v.arms)]
    lines += ["", *rows(arms, ["arm", "weight", "users", "answers", "converted", "rate [interval]", "errors", "p50 ms",
                               "p99 ms"])]
    comps = []
    for c in v.comparisons:
        d, ci = c.difference, c.difference_interval
        comps.append({
            "comparison": f"{c.treatment.name} vs {c.control.name}",
            "difference [interval]": "-" if d is None else f"{d:+.4f}"
            + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else ""),
            "lift": "-" if c.lift is None else f"{c.lift:+.1%}", "min p": f"{c.min_p:.3g}",
            "alpha": f"{c.alpha:.3g}", "state": c.state, "winner": c.winner or "-",
            "samples": f"{c.samples}/{c.samples_needed if c.samples_needed is not None else '?'}"})
    if comps:
        conf = v.comparisons[0].confidence
        lines += ["", *rows(comps, ["comparison", "difference [interval]", "lift", "min p", "alpha", "state",
                                    "winner", "samples"]),
                  f"intervals at {conf:.1%} (Wilson per rate, Newcombe per difference: this look's data)"
                  + (f"; alpha {e.alpha:g} split over {len(comps)} comparisons (Bonferroni), so every interval, the "
                     f"control's too, is at {conf:.1%}" if len(comps) > 1 else "")
                  + "; min p: the always-valid p, significant once <= alpha, however often one looks; samples: "
                    "the smaller arm's users / needed per arm to detect the mde"]
    else:
        lines += ["", "nothing to compare: the experiment has one arm"]
    from aimass.experiments import GUARDRAILS

    least = {**GUARDRAILS, **(e.guardrails or {})}["min_answers"]
    early = [a.arm for a in v.arms[1:] if min(a.answers + a.errors, v.arms[0].answers + v.arms[0].errors) < least]
    lines.append(f"guardrails broken: {'; '.join(v.guardrails_broken)}" if v.guardrails_broken
                 else f"guardrails held: {_rails(e.guardrails)}")
    if early:
        lines.append(f"guardrails not checked yet for {', '.join(early)}: under {least} requests")
    return lines


@app.command()
def show(endpoint: str = typer.Argument(..., help="A deployed endpoint"),
         experiment_id: str = typer.Option(None, "--id", help="An earlier experiment (default: the running one, "
                                                              "else the latest)"),
         as_json: bool = JSON):
    """One look at the experiment: per arm its answers, successes, rate with its interval, errors and p50/p99
    latency; per treatment against the control the difference with its interval, the lift, the always-valid p,
    the state (collecting, running, significant), the winner and the samples so far against those needed; the
    guardrails; the decision once stopped."""
    from aimass import experiments

    v = experiments.show(endpoint, experiment_id=experiment_id, settings=state.settings)
    emit(v, as_json, None if as_json else view_lines(v))


@app.command()
def stop(endpoint: str = typer.Argument(..., help="A deployed endpoint"),
         promote: str = typer.Option(None, "--promote", metavar="ARM",
                                     help="This arm gets all the traffic (its users stay) and, if it is a version "
                                          "of the control's model, becomes its champion"),
         as_json: bool = JSON):
    """End the running experiment. Without --promote the split stays as it is (change it with aimass traffic
    set, or go back to the previous split with aimass rollback: after a ramp, that is the experiment's own
    earlier split; aimass traffic show lists the splits in force before). Refused, with nothing changed, while
    another stop or the scheduler's decision is ending it, or while it is still starting. Prints one line."""
    from aimass import experiments

    e = experiments.stop(endpoint, promote=promote, actor=actor(), settings=state.settings)
    if promote:
        won = e.decision.removeprefix("promoted ").split(" ")[0] if e.decision else promote
        model = e.arms[0]["ref"].split("/")[0]
        moved = won.split("/")[0] == model and "champion alias not moved" not in (e.decision or "")
        then = f"{won} now answers all of {endpoint}'s traffic" + (f" and is {model}@champion" if moved else "")
    else:
        then = (f"the split in force stays as it is: change it with aimass traffic set {endpoint} ..., or go back "
                f"to the previous split (after a ramp, the experiment's own earlier one; aimass traffic show "
                f"{endpoint} lists them) with aimass rollback {endpoint}")
    said = "" if e.decision in (None, "stopped") else f": {e.decision}"
    emit(e, as_json, [f"stopped experiment {e.experiment_id} on {endpoint}{said}; {then}"])
