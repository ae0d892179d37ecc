"""Each source format round-trips through register -> DVC registry -> load, at each version, equal to the
source; the source is re-read here independently of the readers under test."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from aimass import datasets


def _seq_folder(root: Path, train: list[list[int]], val_users: dict[int, tuple[int, int]], test: list[int]):
    """A small ml1m-seq folder: val_users maps user -> (extra val_input item, val_output item)."""
    root.mkdir(parents=True)
    (root / "train_input.txt").write_text("".join(" ".join(map(str, s)) + "\n" for s in train))
    (root / "val_input.txt").write_text(
        "".join(" ".join(map(str, [*train[u - 1], x])) + "\n" for u, (x, _) in sorted(val_users.items())))
    (root / "val_output.txt").write_text("".join(f"{y}\n" for _, (_, y) in sorted(val_users.items())))
    (root / "test_output.txt").write_text("".join(f"{t}\n" for t in test))
    return root


def _rebuild_ml1m_seq(df: pd.DataFrame) -> dict[str, str]:
    """The four source files, rebuilt from the canonical frame."""
    by = {k: g.sort_values("timestamp") for k, g in df.groupby("user_id")}
    users = sorted(by)
    train = {u: by[u].loc[by[u].split == "train", "item_id"].tolist() for u in users}
    val = [u for u in users if (by[u].split == "val").any()]
    line = lambda xs: " ".join(map(str, xs)) + "\n"  # noqa: E731
    return {
        "train_input.txt": "".join(line(train[u]) for u in users),
        "val_input.txt": "".join(line(train[u] + by[u].loc[by[u].split == "val_input", "item_id"].tolist())
                                 for u in val),
        "val_output.txt": "".join(line(by[u].loc[by[u].split == "val", "item_id"].tolist()) for u in val),
        "test_output.txt": "".join(line(by[u].loc[by[u].split == "test", "item_id"].tolist()) for u in users),
    }


def test_ml1m_seq_round_trip_each_version(settings, tmp_path):
    v1 = _seq_folder(tmp_path / "a", [[1, 2, 3], [2, 3, 4, 5], [5, 1]], {2: (6, 7)}, [4, 1, 2])
    v2 = _seq_folder(tmp_path / "b", [[1, 2, 3], [2, 3, 4, 5], [5, 1], [3, 3]], {1: (4, 5), 3: (2, 6)},
                     [4, 1, 2, 7])
    for version, folder in ((1, v1), (2, v2)):
        info = datasets.register("seq", folder, "ml1m-seq", settings=settings)
        assert info.version == version
    for version, folder in ((1, v1), (2, v2)):
        ds = datasets.load(f"seq@v{version}", settings=settings)
        rebuilt = _rebuild_ml1m_seq(ds.interactions)
        for name, text in rebuilt.items():
            assert text == (folder / name).read_text(), (version, name)


def test_sasrec_round_trip(settings, tmp_path):
    lines = ["1 10", "2 11", "1 12", "3 10", "2 10", "1 11"]
    src = tmp_path / "s.txt"
    src.write_text("\n".join(lines) + "\n")
    datasets.register("sas", src, "sasrec", settings=settings)
    src.write_text("\n".join([*lines, "3 12"]) + "\n")
    assert datasets.register("sas", src, "sasrec", settings=settings).version == 2
    for v, n in ((1, 6), (2, 7)):
        df = datasets.load(f"sas@v{v}", settings=settings).interactions
        got = [f"{u} {i}" for u, i in zip(df.user_id, df.item_id, strict=False)]
        assert got == [*lines, "3 12"][:n]


def test_csv_and_parquet_round_trip_with_items(settings, tmp_path):
    inter = pd.DataFrame({"user_id": [1, 1, 2, 2, 3], "item_id": [5, 6, 5, 7, 6],
                          "timestamp": [1_700_000_005, 1_700_000_001, 1_700_000_002, 1_700_000_003, 1_700_000_004],
                          "event": ["play", "skip", "play", "play", "like"], "value": [1.0, 0.1, 0.5, 0.25, 1.0]})
    items = pd.DataFrame({"item_id": [5, 6, 7], "title": ["A", "B", "C"], "text": ["a song", "b", "c"]})
    inter.to_csv(tmp_path / "i.csv", index=False)
    items.to_csv(tmp_path / "items.csv", index=False)
    inter.to_parquet(tmp_path / "i.parquet")
    a = datasets.register("tab", tmp_path / "i.csv", "csv", items=tmp_path / "items.csv", settings=settings)
    b = datasets.register("tabp", tmp_path / "i.parquet", "parquet", items=tmp_path / "items.csv",
                          settings=settings)
    assert a.content_hash == b.content_hash  # same content, whatever the container
    for ref in ("tab@v1", "tabp@v1"):
        ds = datasets.load(ref, settings=settings)
        expected = inter.sort_values("timestamp").reset_index(drop=True)
        pd.testing.assert_frame_equal(ds.interactions, expected, check_dtype=False)
        pd.testing.assert_frame_equal(ds.items[["item_id", "title", "text"]], items, check_dtype=False)
    assert a.timestamp_kind == "unix" and (a.n_users, a.n_items, a.n_rows) == (3, 3, 5)
    from aimass.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="is a folder: give a file"):  # it said "does not exist"
        datasets.register("tab", tmp_path / "i.csv", "csv", items=tmp_path, settings=settings)


def test_movielens_meta_items(settings, tmp_path, monkeypatch):
    d = tmp_path / "ml"
    d.mkdir()
    rows = ["1::Toy Story (1995)::Animation|Children's|Comedy", "2::Jumanji (1995)::Adventure"]
    (d / "movies.dat").write_text("\n".join(rows) + "\n", encoding="latin-1")
    datasets.register("movies", d, "movielens-meta", settings=settings)
    # half stars, as MovieLens-10M's, read by the fast path (pandas' C engine alone: the python engine took 30 s
    # for 10 million ratings); a colon pair at each line's end goes the python engine's way, read the same
    engines = []
    read_csv = pd.read_csv
    monkeypatch.setattr(pd, "read_csv", lambda *a, **kw: engines.append(kw.get("engine")) or read_csv(*a, **kw))
    (d / "ratings.dat").write_text("7::1::5::978300760\n7::2::3.5::978300761\n")
    info = datasets.register("movies", d, "movielens-meta", settings=settings)
    assert info.version == 2 and (info.n_users, info.n_rows) == (1, 2)
    assert "c" in engines and "python" not in engines
    (d / "ratings.dat").write_text("7::1::5::978300760::\n7::2::3.5::978300761::\n")
    assert datasets.register("movies", d, "movielens-meta", settings=settings).content_hash == info.content_hash
    assert "python" in engines
    ds = datasets.load("movies@v1", settings=settings)
    assert ds.interactions.empty
    assert ds.items.title.tolist() == ["Toy Story (1995)", "Jumanji (1995)"]
    assert ds.items.genres.tolist() == ["Animation, Children's, Comedy", "Adventure"]
    r = datasets.load("movies@v2", settings=settings).interactions
    assert r[["user_id", "item_id", "value", "timestamp"]].values.tolist() == [[7, 1, 5, 978300760],
                                                                               [7, 2, 3.5, 978300761]]


@pytest.mark.parametrize("lines,line", [
    ("7::1::5::978300760\n7::2::3::978300761::9\n", 2),  # 5 fields on line 2
    ("7::1::5::978300760::\n7::1::5::978300760::9\n", 2),  # a '::' at line 1's end is no field more
    ("7::1::5::978300760::9\n7::2::3::978300761::9\n", 1),  # on every line: pandas shifted the columns, exit 0
])
def test_movielens_meta_with_a_malformed_ratings_line_is_refused_naming_ratings_dat(settings, tmp_path, lines,
                                                                                      line):
    from aimass.errors import InvalidInputError
    from tests.conftest import state_of

    d = tmp_path / "ml"
    d.mkdir()
    (d / "movies.dat").write_text("1::Toy Story (1995)::Animation\n2::Jumanji (1995)::Adventure\n",
                                  encoding="latin-1")
    (d / "ratings.dat").write_text(lines)
    before = state_of(settings)
    with pytest.raises(InvalidInputError, match=r"movielens-meta \S*ratings\.dat: cannot be parsed "
                                                rf"\(line {line} has more than the four fields") as e:
        datasets.register("movies", d, "movielens-meta", settings=settings)
    assert str(e.value).count("cannot be parsed") == 1
    assert state_of(settings) == before


def _lastfm_folder(d: Path, plays: list[tuple[int, int, int]]) -> Path:
    d.mkdir()
    (d / "user_artists.dat").write_text("userID\tartistID\tweight\n" + "".join(f"{u}\t{a}\t{w}\n" for u, a, w in plays))
    (d / "artists.dat").write_text("id\tname\turl\tpictureURL\n1\tMALICE MIZER\tu\tp\n2\tBjörk\tu\tp\n3\tX\tu\tp\n")
    (d / "tags.dat").write_text("tagID\ttagValue\n1\tj-rock\n2\ticelandic\n3\telectronic\n", encoding="latin-1")
    (d / "user_taggedartists.dat").write_text(
        "userID\tartistID\ttagID\tday\tmonth\tyear\n2\t2\t3\t1\t1\t2008\n3\t2\t3\t1\t1\t2008\n2\t2\t2\t1\t1\t2008\n")
    return d


def test_lastfm_round_trip(settings, tmp_path):
    plays = [(2, 1, 13883), (2, 2, 11690), (3, 2, 5)]
    src = _lastfm_folder(tmp_path / "fm", plays)
    info = datasets.register("fm", src, "lastfm", settings=settings)
    ds = datasets.load("fm", settings=settings)
    got = list(zip(ds.interactions.user_id, ds.interactions.item_id, ds.interactions.value, strict=True))
    assert sorted(got) == sorted(plays) and [u for u, _, _ in got] == [2, 2, 3]  # each user's rows together
    assert ds.items.set_index("item_id").loc[2, "text"] == "Björk | electronic, icelandic"
    assert (info.n_users, info.n_items) == (2, 2)


def test_lastfm_holds_out_a_random_artist_of_each_user_not_the_highest_id(settings, tmp_path):
    """user_artists.dat has no times and lists each user's artists by id, ids given in crawl order: as the
    order, it held out each user's newest-crawled artists (mostly unique), the test target the validation
    target's id + 1. Each user's artists now come in a seeded random order: the same for every registration."""
    plays = [(u, a, 10) for u in range(2, 32) for a in range(1, 21)]
    src = _lastfm_folder(tmp_path / "fm", plays)
    datasets.register("fm", src, "lastfm", settings=settings)
    inter = datasets.load("fm", settings=settings).interactions
    last = inter.groupby("user_id", sort=False)["item_id"].agg(list)
    assert sum(items[-1] == max(items) for items in last) <= 5  # 30 users; by id order all 30
    assert sum(items[-1] == items[-2] + 1 for items in last) <= 5
    from aimass.datasets._formats import read

    again = read(src, "lastfm")  # deterministic: the same content, so the same version
    assert again.interactions["item_id"].tolist() == inter["item_id"].tolist()


def test_a_utf8_movies_dat_keeps_its_titles(settings, tmp_path):
    """A .dat items file in UTF-8 (titles in other scripts) was read as Latin-1: mojibake without an error."""
    (tmp_path / "inter.csv").write_text("user_id,item_id,timestamp\n1,1,1000000000\n1,2,1000000001\n")
    (tmp_path / "movies.dat").write_text("1::東京物語 (1953)::Drama\r\n2::Amélie (2001)::Comedy|Romance\r\n",
                                         encoding="utf-8-sig")  # with a byte-order mark, as Windows editors save
    datasets.register("films", tmp_path / "inter.csv", "csv", items=tmp_path / "movies.dat", settings=settings)
    items = datasets.load("films", settings=settings).items
    assert items.title.tolist() == ["東京物語 (1953)", "Amélie (2001)"]
    assert items.genres.tolist() == ["Drama", "Comedy, Romance"]


def test_the_same_event_twice_is_stored_once(settings, tmp_path):
    """A joined export or a re-posted review repeats a row: left in, leave-one-out holds out a copy of an item
    still in the history, a repeat the user never made."""
    rows = "user_id,item_id,timestamp\n" + "".join(f"1,{i},{1000000000 + i}\n" * 2 for i in range(1, 6))
    (tmp_path / "twice.csv").write_text(rows + "1,5,1000000009\n")  # a real repeat, later: kept
    info = datasets.register("twice", tmp_path / "twice.csv", "csv", settings=settings)
    assert info.n_rows == 6
    assert datasets.load("twice", settings=settings).interactions["item_id"].tolist() == [1, 2, 3, 4, 5, 5]


def test_an_items_table_with_category_columns_registers(settings, tmp_path):
    """read_parquet restores a pandas `category` column; filling its gaps with "" failed on it (TypeError)."""
    pd.DataFrame({"user_id": [1, 1, 2], "item_id": [5, 6, 5], "timestamp": [1, 2, 3]}).to_csv(tmp_path / "i.csv",
                                                                                               index=False)
    items = pd.DataFrame({"item_id": [5, 6, 7], "genre": pd.Categorical(["rock", None, "rock"]),
                          "decade": pd.Categorical([1990, 2000, 1990])})
    items.to_parquet(tmp_path / "items.parquet")
    assert isinstance(pd.read_parquet(tmp_path / "items.parquet")["genre"].dtype, pd.CategoricalDtype)
    datasets.register("cat", tmp_path / "i.csv", "csv", items=tmp_path / "items.parquet", settings=settings)
    got = datasets.load("cat", settings=settings).items
    assert got.genre.tolist() == ["rock", "", "rock"] and got.decade.tolist() == [1990, 2000, 1990]
    assert got.text.tolist() == ["rock", "", "rock"]


@pytest.mark.parametrize("fmt", ["lastfm", "movielens-meta"])
def test_formats_that_build_their_own_items_table_refuse_an_items_file(settings, tmp_path, fmt):
    """`--items` was accepted and silently dropped: the version held other item text than the user gave."""
    from aimass.errors import InvalidInputError
    from tests.conftest import state_of

    if fmt == "lastfm":
        src = _lastfm_folder(tmp_path / "fm", [(2, 1, 10)])
    else:
        src = tmp_path / "ml"
        src.mkdir()
        (src / "movies.dat").write_text("1::Toy Story (1995)::Animation\n", encoding="latin-1")
    mine = tmp_path / "my-items.csv"
    pd.DataFrame({"item_id": [1], "text": ["mine"]}).to_csv(mine, index=False)
    before = state_of(settings)
    with pytest.raises(InvalidInputError, match=f"{fmt}: an items file .*my-items.csv.* is not taken: this format "
                                                "builds its own items table"):
        datasets.register("x", src, fmt, items=mine, settings=settings)
    assert state_of(settings) == before


@pytest.mark.data
def test_real_ml1m_and_lastfm_counts(settings, shared_data):
    ml = datasets.register("ml1m", shared_data / "ml-1m-seq", "ml1m-seq",
                           items=shared_data / "ml-1m-meta" / "movies.dat", settings=settings)
    assert (ml.n_users, ml.n_items) == (6040, 3416)
    fm = datasets.register("lastfm", shared_data / "lastfm-2k", "lastfm", settings=settings)
    assert (fm.n_users, fm.n_items) == (1892, 17632)
    ds = datasets.load("ml1m@v1", settings=settings)
    assert ds.interactions.split.value_counts().to_dict() == {"train": 987019, "test": 6040, "val_input": 512,
                                                              "val": 512}
    assert ds.items.item_id.nunique() == 3416  # every item has a title through the sas->MovieID map
