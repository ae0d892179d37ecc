"""The statistics of A/B experiments: an interval per arm, the difference of two arms, an always-valid
sequential test, and the fixed-horizon sample size that the dashboard shows progress against.

Why a sequential test: an experiment's dashboard is watched while it runs, and people stop when it turns green.
A fixed-horizon z-test peeked at like that calls far more than alpha of A/A experiments significant (about a
third of them at alpha 0.05 with 100 looks, against 0.02 for the test below; tests/experiments/test_stats.py
measures both). The mixture sequential probability ratio test (mSPRT) of Johari, Koomen, Pekelis and Walsh
("Peeking at A/B tests", KDD 2017), the test behind Optimizely's Stats Engine, gives an always-valid p-value
instead: the chance that its running minimum ever falls to alpha under no difference is at most alpha, however
often and whenever one looks. The caller must keep that running minimum over looks at cumulative counts
(SequentialTest does, and resumes from a persisted one).

With diff = b - a and V its estimated variance, the mixture likelihood ratio of N(0, tau^2) alternatives is
    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 diff^2 / (2 V (V + tau^2))),   p = min(1, 1 / Lambda).

tau, the spread of the mixture, defaults to the minimum detectable effect (mde) in the metric's own units
(DEFAULT_MDE = 0.01, one percentage point, for rates). The test is most powerful for effects near tau: much larger
ones are found fast anyway, and much smaller ones take long, which is right for effects below what the experiment
was sized to detect. tau is fixed before the data (never an estimate from it), since a tau that moves with the
data would break the martingale argument the validity rests on.

Rates: V = p_a(1-p_a)/n_a + p_b(1-p_b)/n_b while each arm has MIN_EVENTS successes and failures, else the
pooled p(1-p)(1/n_a + 1/n_b), the variance under no difference (an arm's own plug-in variance is poor, or 0,
with fewer). Nothing is evaluated (state "collecting") until each arm has MIN_SAMPLES exposures and, under no
difference, expects MIN_EVENTS successes and failures (n_arm x pooled p, the chi-square rule): below that
the normal approximation of the difference is poor. The rule is on the pooled rate, not each arm's own, so
that a challenger that converts nobody while the control converts 10% is judged, not left collecting.
Means (e.g. latency, from ArmMoments) use V = var_a/n_a + var_b/n_b and the same core.

The intervals reported next to the test are fixed-horizon ones (Wilson per rate, Newcombe's hybrid score for a
difference of rates, normal for means): they describe the data of one look. The sequential interval is the set of
differences the mSPRT does not reject at this look; it excludes 0 exactly when this look's p is below alpha.
"""
from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel
from scipy import special

from aimass.errors import InvalidInputError

DEFAULT_ALPHA = 0.05
DEFAULT_MDE = 0.01  # absolute rate difference; also the default mixing spread tau of the mSPRT for rates
DEFAULT_POWER = 0.8
MIN_SAMPLES = 100  # exposures per arm before the test is evaluated
MIN_EVENTS = 5  # successes and failures per arm: the usual np >= 5 rule for the normal approximation

State = Literal["collecting", "running", "significant"]
Interval = tuple[float, float]


# ---------------------------------------------------------------------------------------------------------- inputs

def _count(field: str, value: object) -> int:
    # operator.index takes numpy integers (what counts from a DataFrame are) and refuses 10.5
    if isinstance(value, bool):
        raise InvalidInputError(f"{field} must be a whole number, got {value!r}")
    try:
        v = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidInputError(f"{field} must be a whole number, got {value!r}") from None
    if v < 0:
        raise InvalidInputError(f"{field} must not be negative, got {v}")
    return int(v)


def _real(field: str, value: object) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidInputError(f"{field} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise InvalidInputError(f"{field} must be finite, got {v}")
    return v


def _open_unit(field: str, value: object) -> float:
    v = _real(field, value)
    if not 0 < v < 1:
        raise InvalidInputError(f"{field} must lie strictly between 0 and 1, got {v}")
    return v


def _positive(field: str, value: object) -> float:
    v = _real(field, value)
    if v <= 0:
        raise InvalidInputError(f"{field} must be positive, got {v}")
    return v


@dataclass(frozen=True)
class ArmCounts:
    """One arm of a rate metric: n exposures (e.g. served answers) of which `successes` converted (e.g. were
    followed by a play). Counts are cumulative since the experiment started."""

    name: str
    n: int
    successes: int

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidInputError(f"name of an arm must be a non-empty string, got {self.name!r}")
        n = _count(f"n (arm {self.name!r})", self.n)
        successes = _count(f"successes (arm {self.name!r})", self.successes)
        if successes > n:
            raise InvalidInputError(f"successes (arm {self.name!r}) must not exceed n: {successes} > {n}")
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "successes", successes)

    @property
    def rate(self) -> float:
        """successes / n; 0 for an arm with no exposures yet (its Wilson interval is then all of [0, 1])."""
        return self.successes / self.n if self.n else 0.0


@dataclass(frozen=True)
class ArmMoments:
    """One arm of a continuous metric (e.g. latency): n observations, their mean and sample variance (ddof=1)."""

    name: str
    n: int
    mean: float
    var: float

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidInputError(f"name of an arm must be a non-empty string, got {self.name!r}")
        object.__setattr__(self, "n", _count(f"n (arm {self.name!r})", self.n))
        object.__setattr__(self, "mean", _real(f"mean (arm {self.name!r})", self.mean))
        var = _real(f"var (arm {self.name!r})", self.var)
        if var < 0:
            raise InvalidInputError(f"var (arm {self.name!r}) must not be negative, got {var}")
        object.__setattr__(self, "var", var)


Arm = ArmCounts | ArmMoments


# ------------------------------------------------------------------------------------------------------- intervals

def _z(confidence: float) -> float:
    # the bare ufunc: scipy.stats.norm.ppf costs ~50x more per scalar call, and decide() is called per look
    return float(special.ndtri(0.5 + confidence / 2))


def wilson(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """The Wilson score interval of one rate; sound for small counts and rates near 0 or 1, where the
    normal (Wald) interval collapses to a point. (0, 1) for n = 0."""
    s, n = _count("successes", successes), _count("n", n)
    if s > n:
        raise InvalidInputError(f"successes must not exceed n: {s} > {n}")
    confidence = _open_unit("confidence", confidence)
    if n == 0:
        return 0.0, 1.0
    z = _z(confidence)
    p, z2 = s / n, z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # at 0 or n successes the bound is exactly 0 or 1; floating point would leave 1e-17 or 0.9999999999999999
    low = 0.0 if s == 0 else max(0.0, centre - half)
    high = 1.0 if s == n else min(1.0, centre + half)
    return low, high


def diff_interval(a: ArmCounts, b: ArmCounts, confidence: float = 0.95) -> Interval:
    """Newcombe's hybrid score interval (his method 10, 1998) for the difference of rates b - a. It combines the
    two Wilson intervals, so it keeps their good coverage at small counts and extreme rates where the Wald
    interval of the difference undercovers. (-1, 1) while either arm has no exposures."""
    confidence = _open_unit("confidence", confidence)
    if a.n == 0 or b.n == 0:
        return -1.0, 1.0
    pa, pb = a.rate, b.rate
    la, ua = wilson(a.successes, a.n, confidence)
    lb, ub = wilson(b.successes, b.n, confidence)
    d = pb - pa
    low = d - math.sqrt((pb - lb) ** 2 + (ua - pa) ** 2)
    high = d + math.sqrt((ub - pb) ** 2 + (pa - la) ** 2)
    return max(-1.0, low), min(1.0, high)


def _mean_interval(arm: ArmMoments, confidence: float) -> Interval | None:
    if arm.n < 2:
        return None
    half = _z(confidence) * math.sqrt(arm.var / arm.n)
    return arm.mean - half, arm.mean + half


# ---------------------------------------------------------------------------------------------- the sequential test

def msprt_p(diff: np.ndarray | float, variance: np.ndarray | float, tau: float) -> np.ndarray:
    """The mSPRT p-value, min(1, 1/Lambda), of one look at each (diff, variance), vectorised; 1 where the
    variance is not positive (no evidence either way). Not yet the always-valid p: that is its running minimum
    over the looks of one experiment."""
    d = np.asarray(diff, dtype=np.float64)
    v = np.asarray(variance, dtype=np.float64)
    t2 = float(tau) ** 2
    safe = np.where(v > 0, v, 1.0)
    # in logs: exp() of the raw ratio overflows once an effect is a few dozen standard errors away
    log_lambda = 0.5 * np.log(safe / (safe + t2)) + t2 * d * d / (2 * safe * (safe + t2))
    return np.where(v > 0, np.exp(-np.maximum(log_lambda, 0.0)), 1.0)


def _sequential_half_width(variance: float, tau: float, alpha: float) -> float:
    # Lambda(theta0) >= 1/alpha solved for |diff - theta0|: the differences this look rejects
    t2 = tau * tau
    return math.sqrt(2 * variance * (variance + t2) / t2
                     * (math.log(1 / alpha) + 0.5 * math.log((variance + t2) / variance)))


def _rate_diff_variance(sa: np.ndarray, na: np.ndarray, sb: np.ndarray, nb: np.ndarray,
                        min_events: int = MIN_EVENTS) -> tuple[np.ndarray, np.ndarray]:
    na_, nb_ = np.maximum(na, 1), np.maximum(nb, 1)
    pa, pb = sa / na_, sb / nb_
    unpooled = pa * (1 - pa) / na_ + pb * (1 - pb) / nb_
    # an arm with few successes or failures (0% or 100% at worst) has a poor plug-in variance, and the unpooled
    # V would call a difference near-certain; the pooled V (under no difference) stays positive if either varies
    pooled_p = (sa + sb) / (na_ + nb_)
    pooled = pooled_p * (1 - pooled_p) * (1 / na_ + 1 / nb_)
    each = (np.minimum.reduce([sa, na - sa, sb, nb - sb]) >= min_events) & (unpooled > 0)
    return pb - pa, np.where(each, unpooled, pooled)


def _rate_ready(sa: np.ndarray, na: np.ndarray, sb: np.ndarray, nb: np.ndarray, min_samples: int,
                min_events: int) -> np.ndarray:
    pooled_p = (sa + sb) / np.maximum(na + nb, 1)
    expected = np.minimum(np.minimum(na, nb) * pooled_p, np.minimum(na, nb) * (1 - pooled_p))
    return (na >= min_samples) & (nb >= min_samples) & (expected >= min_events)


def sequential_p_values(a_successes: np.ndarray, a_n: np.ndarray, b_successes: np.ndarray, b_n: np.ndarray,
                        tau: float = DEFAULT_MDE, min_samples: int = MIN_SAMPLES,
                        min_events: int = MIN_EVENTS) -> np.ndarray:
    """The mSPRT p of each look at cumulative counts of two rate arms, vectorised (arrays broadcast), 1 where a
    look is still collecting. For simulations and backfills; the always-valid p of an experiment is
    np.minimum.accumulate of these along its looks. The same computation as SequentialTest.update."""
    sa, na = np.asarray(a_successes, dtype=np.float64), np.asarray(a_n, dtype=np.float64)
    sb, nb = np.asarray(b_successes, dtype=np.float64), np.asarray(b_n, dtype=np.float64)
    diff, var = _rate_diff_variance(sa, na, sb, nb, min_events)
    ready = _rate_ready(sa, na, sb, nb, min_samples, min_events)
    return np.where(ready, msprt_p(diff, var, tau), 1.0)


class SequentialResult(BaseModel):
    """One look of a SequentialTest. Persist min_p to resume the test after a restart."""

    state: State
    p_value: float  # this look's mSPRT p; 1 while collecting
    min_p: float  # the always-valid p: the running minimum over all looks so far
    significant: bool  # min_p <= alpha
    alpha: float
    tau: float
    difference: float | None  # b - a; None while an arm has no data
    variance: float | None  # the V of the difference used by the test; None while collecting
    interval: Interval | None  # the sequential interval of this look (see the module docstring); None while collecting


class SequentialTest:
    """The mSPRT of b - a for two rate arms (ArmCounts) or two mean arms (ArmMoments), fed cumulative counts one
    look at a time. It keeps the running minimum of the p-values: that minimum is the always-valid p, and the
    caller persists `min_p` and passes it back to resume. Looks must be of the same growing data; the test is
    valid whatever the number and timing of looks, but not across a reset of the counts.

    tau: the spread of the normal mixture, in the metric's units; for rates it defaults to DEFAULT_MDE (one
    percentage point), for means it must be given (e.g. the smallest latency change worth detecting, in ms)."""

    def __init__(self, tau: float | None = None, alpha: float = DEFAULT_ALPHA, min_p: float = 1.0,
                 min_samples: int = MIN_SAMPLES, min_events: int = MIN_EVENTS) -> None:
        self.tau = None if tau is None else _positive("tau", tau)
        self.alpha = _open_unit("alpha", alpha)
        min_p = _real("min_p", min_p)
        if not 0 <= min_p <= 1:
            raise InvalidInputError(f"min_p must lie between 0 and 1, got {min_p}")
        self.min_p = min_p
        self.min_samples = _count("min_samples", min_samples)
        self.min_events = _count("min_events", min_events)

    def update(self, a: Arm, b: Arm) -> SequentialResult:
        """Evaluate one look at the cumulative data of arms a and b and fold it into the running minimum."""
        if isinstance(a, ArmCounts) and isinstance(b, ArmCounts):
            tau = DEFAULT_MDE if self.tau is None else self.tau
            sa, na, sb, nb = (np.float64(x) for x in (a.successes, a.n, b.successes, b.n))
            d, v = _rate_diff_variance(sa, na, sb, nb, self.min_events)
            diff = float(d) if a.n and b.n else None
            var = float(v)
            ready = bool(_rate_ready(sa, na, sb, nb, self.min_samples, self.min_events))
        elif isinstance(a, ArmMoments) and isinstance(b, ArmMoments):
            if self.tau is None:
                raise InvalidInputError("tau must be given for means: the smallest change worth detecting, in the "
                                        "metric's units")
            tau = self.tau
            diff = b.mean - a.mean if a.n and b.n else None
            var = a.var / max(a.n, 1) + b.var / max(b.n, 1)
            ready = a.n >= self.min_samples and b.n >= self.min_samples and var > 0
        else:
            raise InvalidInputError(f"arms must both be ArmCounts or both ArmMoments, got {type(a).__name__} and "
                                    f"{type(b).__name__}")
        if ready:
            assert diff is not None
            p = float(msprt_p(diff, var, tau))
            self.min_p = min(self.min_p, p)
            half = _sequential_half_width(var, tau, self.alpha)
            interval: Interval | None = (diff - half, diff + half)
        else:
            p, interval = 1.0, None
        significant = self.min_p <= self.alpha
        state: State = "significant" if significant else "running" if ready else "collecting"
        return SequentialResult(state=state, p_value=p, min_p=self.min_p, significant=significant, alpha=self.alpha,
                                tau=tau, difference=diff, variance=var if ready else None, interval=interval)


# ----------------------------------------------------------------------------------------------------- sample size

def _n_rates(p1: float, p2: float, alpha: float, power: float) -> int:
    za, zb = float(special.ndtri(1 - alpha / 2)), float(special.ndtri(power))
    pbar = (p1 + p2) / 2
    n = (za * math.sqrt(2 * pbar * (1 - pbar)) + zb * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) ** 2 / (p2 - p1) ** 2
    return math.ceil(n)


def required_sample_size(base_rate: float, mde_relative: float, alpha: float = DEFAULT_ALPHA,
                         power: float = DEFAULT_POWER) -> int:
    """Exposures per arm for a two-sided two-proportion z-test (pooled variance under H0, no continuity
    correction; Fleiss' formula) at level alpha to detect base_rate -> base_rate * (1 + mde_relative) with the
    given power. A fixed-horizon planning figure: the sequential test needs somewhat more at an effect of
    exactly the mde and stops sooner for larger ones."""
    p1 = _open_unit("base_rate", base_rate)
    rel = _real("mde_relative", mde_relative)
    alpha, power = _open_unit("alpha", alpha), _open_unit("power", power)
    p2 = p1 * (1 + rel)
    if rel == 0 or not 0 < p2 < 1:
        raise InvalidInputError(f"mde_relative must be non-zero and keep the rate inside (0, 1): base_rate {p1} "
                                f"with mde_relative {rel} gives {p2}")
    return _n_rates(p1, p2, alpha, power)


def _needed(control: Arm, mde: float, alpha: float, power: float) -> int | None:
    if isinstance(control, ArmCounts):
        if control.n == 0:
            return None
        p1 = control.rate
        p2 = p1 + mde if p1 + mde < 1 else p1 - mde
        if not 0 <= p2 <= 1:  # an mde too large for this rate either way
            return None
        return _n_rates(p1, p2, alpha, power)
    if control.n < 2 or control.var == 0:
        return None
    za, zb = float(special.ndtri(1 - alpha / 2)), float(special.ndtri(power))
    return math.ceil(2 * (za + zb) ** 2 * control.var / mde ** 2)


# ---------------------------------------------------------------------------------------------------- the verdict

class ArmSummary(BaseModel):
    name: str
    n: int
    successes: int | None  # rates only
    value: float  # the rate (0 with no exposures) or the mean
    interval: Interval | None  # Wilson for rates; normal for means (None below 2 observations)


class Comparison(BaseModel):
    """One treatment arm against the control, at one look. Persist min_p (per treatment) to resume."""

    control: ArmSummary
    treatment: ArmSummary
    metric: Literal["rate", "mean"]
    difference: float | None  # treatment - control
    difference_interval: Interval | None  # Newcombe for rates, normal for means; fixed-horizon
    sequential_interval: Interval | None  # the always-valid test's interval at this look; None while collecting
    lift: float | None  # difference / control value; None when the control's value is 0
    p_value: float  # this look's mSPRT p
    min_p: float  # the always-valid p (running minimum over looks)
    alpha: float  # per comparison, after the Bonferroni correction
    confidence: float  # of the intervals: 1 - alpha
    tau: float
    significant: bool
    winner: str | None  # the better arm when significant
    samples: int  # the smaller arm's n
    samples_needed: int | None  # per arm, fixed-horizon, to detect an effect of mde
    state: State


def _summary(arm: Arm, confidence: float) -> ArmSummary:
    if isinstance(arm, ArmCounts):
        return ArmSummary(name=arm.name, n=arm.n, successes=arm.successes, value=arm.rate,
                          interval=wilson(arm.successes, arm.n, confidence))
    return ArmSummary(name=arm.name, n=arm.n, successes=None, value=arm.mean, interval=_mean_interval(arm, confidence))


def decide(arms: Sequence[Arm], control: str, alpha: float = DEFAULT_ALPHA, mde: float | None = None,
           min_p: float | Mapping[str, float] = 1.0, min_samples: int = MIN_SAMPLES, *,
           higher_is_better: bool = True, power: float = DEFAULT_POWER,
           winners: Mapping[str, str] | None = None) -> list[Comparison]:
    """Compare each non-control arm with the control at one look of cumulative data, in the order of `arms`.

    mde: the minimum detectable effect as an absolute difference in the metric's units (for rates 0.01 is one
    percentage point, the default; for means it must be given). It is the mSPRT's tau and sizes samples_needed.
    min_p: the running minimum p persisted from earlier looks, one float for a single comparison or a mapping
    from treatment name to its min_p (missing names start at 1).
    higher_is_better: which direction wins (False for latency or an error rate).
    winners: the winner persisted from the look that first found each treatment's comparison significant. The
    always-valid test stops there: a later look's difference (noise once the call is made) must not turn the
    call around, so a persisted winner is kept.

    With k > 2 arms there are k - 1 comparisons and each is tested at alpha / (k - 1) (Bonferroni), so the chance
    of any false winner stays at most alpha; the intervals are reported at the same corrected level."""
    arms = list(arms)
    if len(arms) < 2:
        raise InvalidInputError(f"arms must hold at least two arms, got {len(arms)}")
    kinds = {type(arm) for arm in arms}
    if not kinds <= {ArmCounts, ArmMoments} or len(kinds) != 1:
        raise InvalidInputError("arms must be all ArmCounts or all ArmMoments")
    names = [arm.name for arm in arms]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"arms must have distinct names, got {names}")
    if control not in names:
        raise InvalidInputError(f"control {control!r} is not one of the arms {names}")
    alpha, power = _open_unit("alpha", alpha), _open_unit("power", power)
    rates = kinds == {ArmCounts}
    if mde is None:
        if not rates:
            raise InvalidInputError("mde must be given for means: the smallest change worth detecting, in the "
                                    "metric's units")
        mde = DEFAULT_MDE
    mde = _positive("mde", mde)
    if isinstance(min_p, Mapping):
        unknown = set(min_p) - set(names) - {control}
        if unknown:
            raise InvalidInputError(f"min_p names arms that are not in the experiment: {sorted(unknown)}")
        min_ps = dict(min_p)
    else:
        min_ps = {name: min_p for name in names if name != control}
    min_samples = _count("min_samples", min_samples)
    winners = dict(winners or {})
    bad = {k: v for k, v in winners.items() if k not in names or k == control or v not in (k, control)}
    if bad:
        raise InvalidInputError(f"winners must map a treatment to itself or the control {control!r}, got {bad}")

    per_alpha = alpha / (len(arms) - 1)
    confidence = 1 - per_alpha
    base = next(arm for arm in arms if arm.name == control)
    base_summary = _summary(base, confidence)
    needed = _needed(base, mde, per_alpha, power)
    out = []
    for arm in arms:
        if arm.name == control:
            continue
        test = SequentialTest(tau=mde, alpha=per_alpha, min_p=min_ps.get(arm.name, 1.0), min_samples=min_samples)
        seq = test.update(base, arm)
        if isinstance(arm, ArmCounts):
            assert isinstance(base, ArmCounts)
            fixed: Interval | None = diff_interval(base, arm, confidence)
        else:
            assert isinstance(base, ArmMoments)
            fixed = None
            if base.n >= 2 and arm.n >= 2:
                half = _z(confidence) * math.sqrt(base.var / base.n + arm.var / arm.n)
                fixed = (arm.mean - base.mean - half, arm.mean - base.mean + half)
        base_value = base_summary.value
        lift = seq.difference / abs(base_value) if seq.difference is not None and base_value != 0 else None
        winner = None
        if seq.significant and arm.name in winners:
            winner = winners[arm.name]
        elif seq.significant and seq.difference:
            winner = arm.name if (seq.difference > 0) == higher_is_better else control
        out.append(Comparison(
            control=base_summary, treatment=_summary(arm, confidence), metric="rate" if rates else "mean",
            difference=seq.difference, difference_interval=fixed, sequential_interval=seq.interval, lift=lift,
            p_value=seq.p_value, min_p=seq.min_p, alpha=per_alpha, confidence=confidence, tau=seq.tau,
            significant=seq.significant, winner=winner, samples=min(base.n, arm.n), samples_needed=needed,
            state=seq.state))
    return out
