"""Column names of a user's csv or Parquet file mapped onto the canonical ones, as the user declares them
(`--columns userId=user_id,movieId=item_id,rating=value`, `x=-` to leave a column out). Nothing is renamed by
guesswork: a file with other names is refused, and the refusal proposes the mapping its header suggests."""
from __future__ import annotations

import re

import pandas as pd

from aimass.datasets._canonical import OPTIONAL, REQUIRED
from aimass.errors import InvalidInputError

DROP = "-"
TARGETS = (*REQUIRED, *OPTIONAL)
# Names public datasets give these columns (MovieLens-20M/25M, Amazon reviews, Last.fm, Yelp, Steam, ...),
# compared lower-cased without separators; only for the hint.
_ALIASES = {
    "user_id": ("userid", "user", "uid", "customerid", "reviewerid", "visitorid", "memberid", "clientid"),
    "item_id": ("itemid", "item", "iid", "movieid", "artistid", "trackid", "songid", "productid", "bookid",
                "businessid", "gameid", "appid", "asin", "parentasin", "videoid", "newsid", "articleid"),
    "timestamp": ("time", "ts", "datetime", "date", "eventtime", "unixreviewtime", "unixtime", "createdat"),
    "value": ("rating", "ratings", "weight", "plays", "playcount", "score", "overall", "stars", "count"),
    "event": ("eventtype", "type", "action", "behavior", "behaviour", "interaction"),
}


def parse(text: str) -> dict[str, str]:
    """`a=b,c=d` as {"a": "b", "c": "d"} (the CLI's --columns)."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        src, eq, dst = part.partition("=")
        if not eq or not src.strip() or not dst.strip():
            raise InvalidInputError(f"--columns: {part!r} is not SOURCE=TARGET (for example userId=user_id)")
        out[src.strip()] = dst.strip()
    return checked(out)


def checked(columns: dict[str, str] | None) -> dict[str, str]:
    """The mapping, refused when a target is not a canonical column or two sources share one."""
    columns = dict(columns or {})
    for src, dst in columns.items():
        if not isinstance(src, str) or not isinstance(dst, str) or not src:
            raise InvalidInputError(f"columns: {src!r}={dst!r} must map a column name to a name")
        if dst not in TARGETS and dst != DROP:
            raise InvalidInputError(f"columns: {src}={dst}: the target must be one of {', '.join(TARGETS)}, "
                                    f"or {DROP} to leave the column out")
    targets = [d for d in columns.values() if d != DROP]
    twice = sorted({d for d in targets if targets.count(d) > 1})
    if twice:
        raise InvalidInputError(f"columns: more than one column mapped to {', '.join(twice)}")
    return columns


def renamed(df: pd.DataFrame, columns: dict[str, str], what: str, *, items: bool = False) -> pd.DataFrame:
    """`df` with the mapped columns renamed and the dropped ones left out. A source the file lacks is ignored
    (the same mapping serves the interactions and the items file: `movieId=item_id` names both); a target the
    file already has under that name is refused, as the two would be one column."""
    mine = {s: d for s, d in columns.items() if s in df.columns}
    clash = [d for s, d in mine.items() if d != DROP and d in df.columns and d not in mine]
    if clash:
        raise InvalidInputError(f"{what}: columns maps a column to {', '.join(clash)}, which the file already has")
    if items:  # an items table keeps its own columns; only its id has a fixed name
        mine = {s: d for s, d in mine.items() if d in ("item_id", DROP)}
    out = df.drop(columns=[s for s, d in mine.items() if d == DROP])
    return out.rename(columns={s: d for s, d in mine.items() if d != DROP})


def unknown(columns: dict[str, str], *headers: pd.Index) -> None:
    """Refuses a mapped source that no file has: a typo would otherwise be a silent no-op."""
    seen = set().union(*(set(map(str, h)) for h in headers))
    missing = [s for s in columns if s not in seen]
    if missing:
        shown = ", ".join(map(str, headers[0]))
        raise InvalidInputError(f"columns names {', '.join(missing)}, which no file has (the header: {shown})")


def hint(header: pd.Index, want: tuple[str, ...] = TARGETS) -> str:
    """A mapping the header suggests for the canonical columns it lacks, as ' (... --columns A=user_id,...)',
    or '' when it suggests none."""
    have = set(map(str, header))
    pairs = []
    for target in want:
        if target in have:
            continue
        found = [c for c in map(str, header) if _key(c) in _ALIASES.get(target, ())]
        if len(found) == 1 and found[0] not in [s for s, _ in pairs]:
            pairs.append((found[0], target))
    if not pairs:
        return f" (the header: {', '.join(map(str, header))}; map its names with --columns SOURCE=TARGET)"
    mapping = ",".join(f"{s}={t}" for s, t in pairs)
    return f" (the header: {', '.join(map(str, header))}; register it with --columns {mapping})"


def _key(name: str) -> str:
    return re.sub(r"[\s_\-.]", "", name).lower()
