"""`aimass retrain ENDPOINT`: the endpoint's feedback into a new dataset version, a challenger trained on it,
the promotion gate on the new version's test split."""
from __future__ import annotations

import typer

from aimass import console
from aimass.cli._common import JSON, emit, retrain_outcome, state


def retrain(
    endpoint: str = typer.Argument(..., help="A deployed endpoint (aimass deployments list)"),
    reason: str = typer.Option("manual", "--reason", help="manual, schedule, volume or drift (recorded)"),
    no_promote: bool = typer.Option(False, "--no-promote", help="Run the gate and record its decision, but "
                                                                "leave the champion alone"),
    time_budget: float = typer.Option(None, "--time-budget", help="Minutes of training at most (default: the "
                                                                  "champion's own budget)"),
    as_json: bool = JSON,
):
    """Retrain the champion behind ENDPOINT on its new feedback events: a new dataset version (the
    champion's plus the positive events), the same family and params trained on it with Ray Train, registered
    as challenger and put through the gate. On a running endpoint serving one model, a challenger the gate passes
    goes out as a canary (AIMASS_CANARY_PERCENT of users, 10 by default; 0: none), promoted when it wins online;
    otherwise a passing challenger becomes champion and is not deployed: `aimass deploy NAME@champion --endpoint
    ENDPOINT` serves it."""
    from aimass import retraining
    from aimass.errors import InvalidInputError

    if reason not in retraining.REASONS:  # before the stage line: bad input gets one line
        raise InvalidInputError(f"unknown retrain reason {reason!r}; use one of {', '.join(retraining.REASONS)}")
    from aimass import serving, training

    training.check_budget(time_budget, "--time-budget")  # the rule retrain applies, named by its flag

    serving.check_deployed(endpoint, settings=state.settings)  # an unknown endpoint: one line, no stage line
    console.stage(f"retraining what {endpoint} serves on its new feedback ({reason}); logs: {console.log_path()}")
    r = retraining.retrain(endpoint, reason=reason, promote=not no_promote, progress=not as_json,
                           settings=state.settings, time_budget_min=time_budget)
    lines = [f"{r.parent_dataset} + {r.positive} positive of {r.events} new events (the endpoint's log positions "
             f"{r.events_after_seq + 1}..{r.events_through_seq}, shared with other endpoints) -> {r.dataset}",
             f"challenger {r.challenger} ({r.family}, run {r.run_id}): test_ndcg@10 "
             f"{r.metrics.get('test_ndcg@10', float('nan')):.4f}",
             f"gate {retrain_outcome(r)}"]
    lines += [f"  {'pass' if c.passed else 'FAIL'} {c.check}: {c.detail}" for c in r.gate]
    lines += [f"note: {n}" for n in r.notes] + [r.next_step or "", f"record: {r.record}"]
    emit(r, as_json, lines)
