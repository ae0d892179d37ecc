"""Readers: one function per source format, each returning the canonical layout (see _canonical)."""
from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from aimass.datasets import _columns
from aimass.datasets._canonical import ID_MAX, REQUIRED, Canonical, normalise, unix_seconds
from aimass.errors import InvalidInputError

Reader = Callable[[Path, "Path | None"], Canonical]
_READERS: dict[str, Reader] = {}
_TABULAR = ("csv", "parquet")  # the formats whose column names are the user's


def reader(name: str) -> Callable[[Reader], Reader]:
    def deco(fn: Reader) -> Reader:
        _READERS[name] = fn
        return fn

    return deco


def formats() -> list[str]:
    return sorted(_READERS)


def read(path: str | Path, fmt: str, items: str | Path | None = None,
         columns: dict[str, str] | None = None) -> Canonical:
    """`columns` maps a csv or Parquet file's own column names onto the canonical ones (see _columns)."""
    if fmt not in _READERS:
        raise InvalidInputError(f"unknown format {fmt!r}; known formats: {', '.join(formats())}")
    columns = _columns.checked(columns)
    if columns and fmt not in _TABULAR:
        raise InvalidInputError(f"{fmt}: columns are mapped only for {' and '.join(_TABULAR)} files; "
                                f"{fmt} has a fixed layout")
    p = Path(path).expanduser()
    if not p.exists():
        raise InvalidInputError(f"path does not exist: {p}")
    ip = None
    if items is not None:
        ip = Path(items).expanduser()
        if not ip.is_file():
            raise InvalidInputError(f"items file {ip} is a folder: give a file" if ip.is_dir()
                                    else f"items file does not exist: {ip}")
    return _READERS[fmt](p, ip, columns) if columns else _READERS[fmt](p, ip)


# -- helpers -------------------------------------------------------------------------------------------------


def _need_file(folder: Path, name: str, fmt: str) -> Path:
    f = folder / name
    if not f.is_file():
        raise InvalidInputError(f"{fmt}: {folder} has no {name}")
    return f


def _own_items(items: Path | None, fmt: str, source: str) -> None:
    """Refuses an items file a format has no use for: dropping it silently would register other item text
    than the user asked for."""
    if items is not None:
        raise InvalidInputError(f"{fmt}: an items file (--items {items}) is not taken: this format builds its "
                                f"own items table from {source}")


def _int_lines(path: Path, min_tokens: int = 1, exact: int | None = None) -> list[list[int]]:
    """Whitespace-separated ids, one record per line; names the first bad line."""
    rows = []
    try:
        with path.open(encoding="utf-8-sig") as fh:  # a byte-order mark is not part of line 1's first id
            for n, line in enumerate(fh, 1):
                tokens = line.split()
                if not tokens:
                    continue
                if len(tokens) < min_tokens or (exact is not None and len(tokens) != exact):
                    want = f"{exact}" if exact else f"at least {min_tokens}"
                    raise InvalidInputError(f"{path}:{n}: expected {want} fields, found {len(tokens)}")
                try:
                    ids = [int(t) for t in tokens]
                except ValueError:
                    raise InvalidInputError(f"{path}:{n}: ids must be integers, found {line.strip()[:60]!r}") from None
                out = next((i for i in ids if not 0 <= i <= ID_MAX), None)
                if out is not None:  # int64 arrays could not hold it, and serving would refuse it
                    raise InvalidInputError(f"{path}:{n}: ids must be integers from 0 to 2**62, found {out}")
                rows.append(ids)
    except UnicodeDecodeError:
        raise InvalidInputError(f"{path}: not a UTF-8 text file") from None
    if not rows:
        raise InvalidInputError(f"{path}: file is empty")
    return rows


def _is_parquet(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(4) == b"PAR1"


def _table(path: Path, what: str, fmt: str) -> pd.DataFrame:
    """`fmt` (csv or parquet) picks the parser, not the suffix: `x.pq` declared Parquet is Parquet."""
    if path.stat().st_size == 0:
        raise InvalidInputError(f"{path}: file is empty")
    if fmt == "csv" and _is_parquet(path):
        raise InvalidInputError(f"{what} {path}: is a Parquet file; register it with format parquet "
                                f"(--format parquet)")
    name = path.name.lower()
    try:
        if fmt == "parquet":
            return pd.read_parquet(path)
        # utf-8-sig: a byte-order mark, as Windows editors write, would otherwise stick to the first column's
        # name. Only an empty field is missing: "None", "NA" or "null" are a title, an event or a tag as written.
        # index_col=False: rows with one field more than the header made pandas read the first as an index and
        # shift every column by one (exit 0, the wrong data); its warning of the loss is made the error here
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(path, sep="\t" if name.endswith((".tsv", ".tsv.gz")) else ",",
                               encoding="utf-8-sig", keep_default_na=False, na_values=[""], index_col=False)
    except pd.errors.ParserWarning:
        raise InvalidInputError(f"{what} {path}: rows have more fields than the header names") from None
    except (ValueError, pd.errors.ParserError, OSError) as e:
        raise InvalidInputError(f"{what} {path}: cannot be parsed ({str(e).splitlines()[0]})") from None


def _items_file(path: Path | None) -> pd.DataFrame | None:
    if path is None:
        return None
    if path.name.endswith(".dat"):
        return _movies_dat(path)
    # an items file has no declared format: Parquet by its suffix or its magic bytes, else delimited text
    fmt = "parquet" if path.suffix.lower() in (".parquet", ".pq") or _is_parquet(path) else "csv"
    return _table(path, "items file", fmt)


def decoded(path: Path, what: str) -> str:
    """A text file's contents: UTF-8 when it is (a byte-order mark, as Windows editors write, is not part of
    line 1), else a single-byte Windows-1252 file (MovieLens-1M's movies.dat and Last.fm's tags.dat are Latin-1,
    which it extends). Latin-1 decodes any bytes at all, so reading every non-UTF-8 file with it stored other
    encodings as mojibake: a UTF-8 file with a stray byte, and a legacy encoding of a non-Latin script
    (Shift-JIS, GBK, Windows-1251), are refused instead."""
    import re
    import statistics

    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
    fix = "; re-encode it as UTF-8 (for example iconv -f ENCODING -t UTF-8)"
    # Most of its non-ASCII byte runs are UTF-8 characters: a UTF-8 file with a few bytes of something else. (In
    # a Windows-1252 file a run is UTF-8 only by accident: "É»" is one; "çã" or a lone "é" is not.)
    runs = re.findall(rb"[\x80-\xff]+", raw)
    if 2 * sum(_is_utf8(r) for r in runs) > len(runs):
        raise InvalidInputError(f"{what} {path}:{line}: not UTF-8, though most of the file is: it mixes "
                                f"encodings{fix}")
    # Latin text is mostly ASCII letters with a few accented ones; in a non-Latin script every letter is a byte
    # (or two) from 0x80 up
    share = [len(re.findall(rb"[\x80-\xff]", x)) / len(re.findall(rb"[\x80-\xff]|[A-Za-z]", x))
             for x in raw.split(b"\n") if re.search(rb"[\x80-\xff]", x)]
    if statistics.median(share) > 0.5:
        raise InvalidInputError(f"{what} {path}: neither UTF-8 nor a Latin single-byte encoding (most letters of its "
                                f"non-ASCII lines are bytes from 0x80 up, as in Shift-JIS, GBK, Big5 or "
                                f"Windows-1251){fix}")
    try:
        return raw.decode("cp1252")
    except UnicodeDecodeError as e:
        line, byte = raw.count(b"\n", 0, e.start) + 1, raw[e.start]
    raise InvalidInputError(f"{what} {path}:{line}: byte {byte:#04x} is text in neither UTF-8 nor Windows-1252{fix}")


def _is_utf8(run: bytes) -> bool:
    try:
        run.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _movies_dat(path: Path) -> pd.DataFrame:
    rows = []
    text = decoded(path, "movielens")
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        parts = line.rstrip("\r").split("::")
        if len(parts) != 3:
            raise InvalidInputError(f"{path}:{n}: expected MovieID::Title::Genres")
        try:
            rows.append((int(parts[0]), parts[1], parts[2].replace("|", ", ")))
        except ValueError:
            raise InvalidInputError(f"{path}:{n}: MovieID must be an integer, found {parts[0]!r}") from None
    if not rows:
        raise InvalidInputError(f"{path}: file is empty")
    df = pd.DataFrame(rows, columns=["item_id", "title", "genres"])
    df["text"] = df["title"] + " | " + df["genres"]
    return df


def _sequences(users: list[int], seqs: list[list[int]], split: str, start: list[int]) -> pd.DataFrame:
    lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    user = np.repeat(np.asarray(users, dtype=np.int64), lens)
    offsets = np.repeat(np.asarray(start, dtype=np.int64) - np.cumsum(lens) + lens, lens)
    ts = np.arange(lens.sum(), dtype=np.int64) + offsets
    items = np.fromiter((i for s in seqs for i in s), dtype=np.int64, count=int(lens.sum()))
    return pd.DataFrame({"user_id": user, "item_id": items, "timestamp": ts, "split": split})


# -- formats -------------------------------------------------------------------------------------------------


def _val_owners(train: list[list[int]], val_in: list[list[int]], test_in: list[list[int]] | None) -> list[int]:
    """The user (train_input line number) of each val_input line: the one whose train line it extends by one
    item. Users with identical train lines (short histories often share them) are told apart by
    test_input.txt when the folder has it (a validation user's line is two items longer than its train line,
    anyone else's one), else by the validation rows' user order, as the SASRec preprocessing writes them; one
    neither tells is refused (taking the first match gave one user's validation rows to another, silently)."""
    by_seq: dict[tuple[int, ...], list[int]] = {}
    for u, s in enumerate(train, 1):
        if test_in is None or len(test_in[u - 1]) == len(s) + 2:
            by_seq.setdefault(tuple(s), []).append(u)
    which = " of a user whose test_input line is two items longer" if test_in is not None else ""
    cands = []
    for n, s in enumerate(val_in, 1):
        owners = by_seq.get(tuple(s[:-1]))
        if not owners:
            raise InvalidInputError(f"ml1m-seq: val_input line {n} extends no train_input line{which}")
        cands.append(owners)
    if all(len(c) == 1 for c in cands) and len({c[0] for c in cands}) == len(cands):
        return [c[0] for c in cands]
    low, prev = [], 0  # the smallest owners in increasing user order
    for n, c in enumerate(cands, 1):
        u = next((u for u in c if u > prev), None)
        if u is None:
            raise InvalidInputError(
                f"ml1m-seq: val_input line {n} extends the train_input line of user(s) "
                f"{', '.join(map(str, c[:5]))}, each the user of an earlier val_input line or before it in user "
                "order: the validation rows must name distinct users, in user order")
        low.append(u)
        prev = u
    high, nxt = [0] * len(cands), None  # the largest owners in increasing user order
    for j in range(len(cands) - 1, -1, -1):
        high[j] = nxt = max(u for u in cands[j] if nxt is None or u < nxt)
    for n, (a, b) in enumerate(zip(low, high, strict=True), 1):
        if a != b:
            raise InvalidInputError(
                f"ml1m-seq: val_input line {n} extends the identical train_input lines of users {a} and {b}, and "
                "the order of the validation rows does not tell which is its user; add test_input.txt (each "
                "user's history but its last item) to the folder to tell them apart")
    return low


@reader("ml1m-seq")
def _ml1m_seq(path: Path, items: Path | None) -> Canonical:
    """The SASRec-preprocessed split folder; keeps its train / val / test roles in a `split` column.
    Timestamps are positions in the user's full history (the source has none); the unknown second-to-last
    item of non-validation users leaves a gap."""
    if not path.is_dir():
        raise InvalidInputError(f"ml1m-seq: {path} is not a folder")
    train = _int_lines(_need_file(path, "train_input.txt", "ml1m-seq"))
    val_in = _int_lines(_need_file(path, "val_input.txt", "ml1m-seq"))
    val_out = _int_lines(_need_file(path, "val_output.txt", "ml1m-seq"), exact=1)
    test = _int_lines(_need_file(path, "test_output.txt", "ml1m-seq"), exact=1)
    if len(test) != len(train):
        raise InvalidInputError(f"ml1m-seq: {len(train)} train lines but {len(test)} test lines (blank lines are "
                                "skipped: every user needs at least one train item)")
    if len(val_in) != len(val_out):
        raise InvalidInputError(f"ml1m-seq: {len(val_in)} val_input lines but {len(val_out)} val_output lines")
    test_in = None
    if (path / "test_input.txt").is_file():
        test_in = _int_lines(path / "test_input.txt")
        if len(test_in) != len(train):
            raise InvalidInputError(f"ml1m-seq: {len(train)} train lines but {len(test_in)} test_input lines")
    val_users = _val_owners(train, val_in, test_in)
    users = list(range(1, len(train) + 1))
    lens = [len(s) for s in train]
    vset = set(val_users)
    frames = [
        _sequences(users, train, "train", [0] * len(users)),
        _sequences(val_users, [[s[-1]] for s in val_in], "val_input", [lens[u - 1] for u in val_users]),
        _sequences(val_users, val_out, "val", [lens[u - 1] + 1 for u in val_users]),
        _sequences(users, test, "test", [lens[u - 1] + 2 if u in vset else lens[u - 1] + 1 for u in users]),
    ]
    if test_in is not None:  # the item before each other user's test target: in its test history, not trained on
        others = [u for u in users if u not in vset]
        for u in others:
            if test_in[u - 1][:-1] != train[u - 1]:
                raise InvalidInputError(f"ml1m-seq: test_input line {u} is not train_input line {u} and one item "
                                        f"more (user {u} has no validation row)")
        for u, s, o in zip(val_users, val_in, val_out, strict=True):
            if test_in[u - 1] != [*s, *o]:
                raise InvalidInputError(f"ml1m-seq: test_input line {u} is not user {u}'s val_input line and "
                                        "its val_output item")
        frames.append(_sequences(others, [test_in[u - 1][-1:] for u in others], "val_input",
                                 [lens[u - 1] for u in others]))
    df = pd.concat(frames, ignore_index=True).sort_values(["user_id", "timestamp"], kind="stable")
    item_table = None
    if items is not None:
        item_table = _items_file(items)
        mapping = path / "sas_to_original_items.txt"
        if items.name.endswith(".dat") and not mapping.is_file():
            # movies.dat is keyed by MovieLens ids, the folder by SASRec's renumbered ones: joined as they are,
            # every item would carry another film's title
            raise InvalidInputError(f"ml1m-seq: {path} has no sas_to_original_items.txt, which maps its item ids "
                                    f"to the MovieIDs of {items.name}; add it to the folder, or give an items "
                                    f"csv/parquet keyed by the folder's own item ids")
        if items.name.endswith(".dat"):
            m = pd.DataFrame(_int_lines(mapping, exact=2), columns=["item_id", "original_id"])
            item_table = m.merge(item_table.rename(columns={"item_id": "original_id"}), on="original_id")
    return normalise(df, item_table, "order", f"ml1m-seq {path}")


@reader("sasrec")
def _sasrec(path: Path, items: Path | None) -> Canonical:
    """One `user item` line per interaction, in time order; the line number is the timestamp."""
    if path.is_dir():
        raise InvalidInputError(f"sasrec: {path} is a folder; give the interactions file")
    arr = np.asarray(_int_lines(path, exact=2), dtype=np.int64)
    df = pd.DataFrame({"user_id": arr[:, 0], "item_id": arr[:, 1], "timestamp": np.arange(len(arr))})
    return normalise(df, _items_file(items), "order", f"sasrec {path}")


@reader("movielens-meta")
def _movielens_meta(path: Path, items: Path | None) -> Canonical:
    """MovieLens movies.dat as the items table; ratings.dat beside it, when present, as interactions."""
    _own_items(items, "movielens-meta", "movies.dat")
    if path.name == "ratings.dat":  # the ratings given: their folder is the dataset
        path = path.parent
    folder = path if path.is_dir() else path.parent
    if path.name in ("ratings.csv", "movies.csv") or (
            path.is_dir() and not (folder / "movies.dat").is_file() and (folder / "ratings.csv").is_file()):
        raise InvalidInputError(  # MovieLens-20M/25M and the small sets: the same data as csv with a header
            f"movielens-meta: {folder} has no movies.dat but a ratings.csv (MovieLens-20M/25M's layout): register "
            f"{folder / 'ratings.csv'} with --format csv --items {folder / 'movies.csv'} "
            "--columns userId=user_id,movieId=item_id,rating=value")
    movies = _movies_dat(_need_file(folder, "movies.dat", "movielens-meta") if path.is_dir() else path)
    ratings = folder / "ratings.dat"
    if ratings.is_file():
        try:
            r = _ratings_dat(ratings)
        except pd.errors.EmptyDataError:
            r = pd.DataFrame()
        except (ValueError, pd.errors.ParserError, OSError) as e:
            raise InvalidInputError(f"movielens-meta {ratings}: cannot be parsed "
                                    f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        if r.empty:  # a ratings file given is meant to be read: an empty one is a mistake, not "no ratings"
            raise InvalidInputError(f"movielens-meta {ratings}: no ratings (remove the file to register the "
                                    "movies alone)")
        r["timestamp"] = unix_seconds(r["timestamp"], f"movielens-meta {ratings}")  # milliseconds, say
        r["event"] = "rating"
        kind = "unix"
    else:
        # Same columns as with ratings, so adding ratings.dat later makes a compatible next version.
        r = pd.DataFrame({"user_id": [], "item_id": [], "timestamp": [], "event": [], "value": []})
        kind = "unix"
    return normalise(r, movies, kind, f"movielens-meta {path}", ties="hashed")


def _ratings_dat(path: Path) -> pd.DataFrame:
    """`UserID::MovieID::Rating::Timestamp` lines. pandas takes a two-character separator only in its python
    engine: 30 s and 3 GB for MovieLens-10M's size. Every field is a number, so the C engine splits on ':' (5 s)
    and the fields between each pair of colons must be empty; a file that does not read so is read the slow
    way, as before, whose errors name what is wrong."""
    names = ["user_id", "item_id", "value", "timestamp"]
    # index_col=False: lines with more fields than named made pandas take the first ones as an index, shifting
    # every column (a user's ratings registered under its movie ids); its warning of the loss is made an error
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.ParserWarning)
        try:
            r = pd.read_csv(path, sep=":", header=None, names=range(7), engine="c", index_col=False)
        except (ValueError, pd.errors.ParserWarning):  # more fields, an empty file: the python engine's error
            r = None
        if r is not None and r[[1, 3, 5]].isna().all(axis=None) and r[[0, 2, 4, 6]].notna().all(axis=None) \
                and all(r[c].dtype.kind in "iuf" for c in (0, 2, 4, 6)):
            return r[[0, 2, 4, 6]].set_axis(names, axis=1)
        r = None  # not held while the file is read again
        try:
            return pd.read_csv(path, sep="::", engine="python", header=None, names=names, index_col=False)
        except pd.errors.ParserWarning:  # which the caller reports as "cannot be parsed (...)"
            n = _first_long_line(path)
            raise pd.errors.ParserError(f"{f'line {n}' if n else 'a line'} has more than the four fields of "
                                        "UserID::MovieID::Rating::Timestamp") from None


def _first_long_line(path: Path) -> int | None:
    """The number of the first `::` line with more than four fields (one `::` at its end is none more, as
    pandas reads it), for the error: pandas' own warning names no line."""
    with path.open(encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            fields = line.rstrip("\r\n").split("::")
            if len(fields) - (fields[-1] == "") > 4:
                return n
    return None


@reader("lastfm")
def _lastfm(path: Path, items: Path | None) -> Canonical:
    """HetRec 2011 Last.fm: plays as `value`, artist names and their most used tags as item text."""
    _own_items(items, "lastfm", "artists.dat and tags.dat")
    if not path.is_dir():
        raise InvalidInputError(f"lastfm: {path} is not a folder")
    ua = _hetrec(_need_file(path, "user_artists.dat", "lastfm"), ["userID", "artistID", "weight"])
    dup = ua.duplicated(["userID", "artistID"])
    if dup.any():  # each row is its own position below, so the canonical de-duplication would never see them
        first = ua.loc[dup].iloc[0]
        raise InvalidInputError(f"lastfm {path / 'user_artists.dat'}: user {first['userID']} and artist "
                                f"{first['artistID']} have more than one row ({int(dup.sum())} repeated pairs in "
                                "all); the file holds one row per pair, its total plays: merge them first")
    # No times: each user's artists in a seeded random order. The file's order is artist id order, and ids were
    # given in crawl order, so leave-one-out by it held out each user's newest-crawled (mostly unique) artists,
    # the test target the validation target's id + 1 for most users: a split item-kNN won by id adjacency.
    ua = ua.sample(frac=1.0, random_state=0).sort_values("userID", kind="stable")
    df = pd.DataFrame({"user_id": ua["userID"], "item_id": ua["artistID"], "timestamp": np.arange(len(ua)),
                       "event": "play", "value": ua["weight"]})
    artists = _hetrec(_need_file(path, "artists.dat", "lastfm"), ["id", "name"])
    item_table = pd.DataFrame({"item_id": artists["id"], "name": artists["name"].fillna("")})
    tags_f, tagged_f = path / "tags.dat", path / "user_taggedartists.dat"
    if tags_f.is_file() and tagged_f.is_file():
        tags = _hetrec(tags_f, ["tagID", "tagValue"]).dropna(subset=["tagValue"])
        tagged = _hetrec(tagged_f, ["artistID", "tagID"])
        counts = tagged.groupby(["artistID", "tagID"]).size().rename("n").reset_index()
        counts = counts.merge(tags, on="tagID").sort_values(["artistID", "n", "tagValue"],
                                                            ascending=[True, False, True])
        top = counts.groupby("artistID").head(10).groupby("artistID")["tagValue"].agg(", ".join)
        item_table["tags"] = item_table["item_id"].map(top).fillna("")
    else:
        item_table["tags"] = ""
    item_table["text"] = (item_table["name"] + " | " + item_table["tags"]).str.rstrip(" |")
    return normalise(df, item_table, "order", f"lastfm {path}")


def _hetrec(path: Path, cols: list[str]) -> pd.DataFrame:
    import io

    text = decoded(path, "lastfm")  # artists.dat is UTF-8, tags.dat Latin-1: each file as it is
    try:
        # quoting=3 (none): a name such as "Weird Al" Yankovic is written with its quotes. index_col=False: rows
        # with a field more than the header (a trailing tab) made pandas take the first as an index and shift
        # every column (tags on other artists, exit 0); fields past the header's are not among those read
        df = pd.read_csv(io.StringIO(text), sep="\t", usecols=lambda c: c.strip('"') in cols, quoting=3,
                         dtype=str, keep_default_na=False, na_values=[""], index_col=False)
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise InvalidInputError(f"lastfm {path}: cannot be parsed ({str(e).splitlines()[0]})") from None
    df.columns = [c.strip('"') for c in df.columns]  # an export that quotes every field quotes the header too
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise InvalidInputError(f"lastfm {path}: missing column(s) {', '.join(missing)} in its header")
    if df.empty:
        raise InvalidInputError(f"lastfm {path}: no rows")
    for c in cols:
        if c.endswith("ID") or c in ("id", "weight"):
            num = pd.to_numeric(df[c].str.strip('"'), errors="coerce")  # ids and counts quoted or not
            # checked before the cast, which would wrap a larger number; ids to the 0..2**62 serving takes
            low = -ID_MAX if c == "weight" else 0
            bad = num.isna() | (num % 1 != 0) | (num < low) | (num > ID_MAX)
            if bad.any():
                span = "" if low else " from 0 to 2**62"
                raise InvalidInputError(f"lastfm {path}: column {c} must hold integers{span}, found "
                                        f"{df.loc[bad, c].iloc[0]!r}")
            df[c] = num.astype("int64")
    return df


def _tabular(path: Path, items: Path | None, fmt: str, columns: dict[str, str] | None = None) -> Canonical:
    if path.is_dir():
        raise InvalidInputError(f"{fmt}: {path} is a folder; give the interactions file")
    df = _table(path, f"{fmt} file", fmt)
    item_table = _items_file(items)
    if columns:
        _columns.unknown(columns, df.columns, *([] if item_table is None else [item_table.columns]))
        df = _columns.renamed(df, columns, f"{fmt} {path}")
        if item_table is not None:
            item_table = _columns.renamed(item_table, columns, f"items file {items}", items=True)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise InvalidInputError(f"{fmt} {path}: missing column(s) {', '.join(missing)}{_columns.hint(df.columns)}")
    extra = [str(c) for c in df.columns if c not in _columns.TARGETS]
    if extra:
        raise InvalidInputError(f"{fmt} {path}: unexpected column(s) {', '.join(extra)}; allowed: "
                                f"{', '.join(_columns.TARGETS)} (map or leave them out with --columns, for "
                                f"example {extra[0]}=-)")
    if item_table is not None and "item_id" not in item_table.columns:
        raise InvalidInputError(f"items file {items}: missing column item_id"
                                f"{_columns.hint(item_table.columns, ('item_id',))}")
    if df.empty:
        raise InvalidInputError(f"{path}: no rows")
    ts = None
    if "timestamp" in df.columns:
        df["timestamp"] = ts = unix_seconds(df["timestamp"], f"{fmt} {path}")
    kind = "unix" if ts is not None and pd.to_numeric(ts, errors="coerce").min() > 10**8 else "order"
    return normalise(df, item_table, kind, f"{fmt} {path}", ties="hashed")


@reader("csv")
def _csv(path: Path, items: Path | None, columns: dict[str, str] | None = None) -> Canonical:
    """Interactions with a header: user_id, item_id, timestamp[, event, value], or other names `columns` maps."""
    return _tabular(path, items, "csv", columns)


@reader("parquet")
def _parquet(path: Path, items: Path | None, columns: dict[str, str] | None = None) -> Canonical:
    return _tabular(path, items, "parquet", columns)
