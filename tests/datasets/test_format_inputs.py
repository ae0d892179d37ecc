"""Source files as people export them: other time units, other suffixes, byte-order marks, words pandas reads as
missing, and the ml1m-seq items that only a mapping file can key."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from aimass.datasets._formats import read
from aimass.errors import InvalidInputError

SECONDS = [1_700_000_000, 1_700_000_060, 1_700_003_600]


def _seq_folder(root: Path) -> Path:
    """Two users in SASRec's renumbered ids 1..3; user 1 has a validation target."""
    root.mkdir()
    (root / "train_input.txt").write_text("1 2\n2 3\n")
    (root / "val_input.txt").write_text("1 2 3\n")
    (root / "val_output.txt").write_text("1\n")
    (root / "test_output.txt").write_text("2\n1\n")
    return root


def test_ml1m_seq_with_movies_dat_and_no_id_mapping_is_refused(tmp_path):
    """movies.dat is keyed by MovieLens ids, the folder by SASRec's renumbered ones: without
    sas_to_original_items.txt item 1 got MovieID 1's title, silently."""
    folder = _seq_folder(tmp_path / "seq")
    movies = tmp_path / "movies.dat"
    movies.write_text("1::Toy Story (1995)::Animation\n2::Jumanji (1995)::Adventure\n3::Heat (1995)::Action\n")
    with pytest.raises(InvalidInputError, match=r"ml1m-seq: .*no sas_to_original_items\.txt"):
        read(folder, "ml1m-seq", items=movies)
    (folder / "sas_to_original_items.txt").write_text("1 3\n2 1\n3 2\n")
    titles = read(folder, "ml1m-seq", items=movies).items.set_index("item_id")["title"]
    assert titles.to_dict() == {1: "Heat (1995)", 2: "Toy Story (1995)", 3: "Jumanji (1995)"}


def test_parquet_datetime_timestamps_are_stored_as_unix_seconds(tmp_path):
    df = pd.DataFrame({"user_id": [1, 1, 2], "item_id": [5, 6, 5],
                       "timestamp": pd.to_datetime(SECONDS, unit="s")})
    df.to_parquet(tmp_path / "dt.parquet")
    got = read(tmp_path / "dt.parquet", "parquet")
    assert got.interactions.timestamp.max() < 1e11 and got.timestamp_kind == "unix"
    assert sorted(got.interactions.timestamp) == SECONDS
    df["timestamp"] = df["timestamp"].dt.tz_localize("Europe/Berlin")  # an aware time is the same instant
    df.to_parquet(tmp_path / "tz.parquet")
    assert sorted(read(tmp_path / "tz.parquet", "parquet").interactions.timestamp) == [t - 3600 for t in SECONDS]


@pytest.mark.parametrize("scale", [1_000, 1_000_000, 1_000_000_000])
def test_milli_micro_and_nanosecond_unix_times_are_stored_as_seconds(tmp_path, scale):
    rows = "".join(f"1,{i},{t}\n" for i, t in enumerate(SECONDS, 5))
    (tmp_path / "s.csv").write_text("user_id,item_id,timestamp\n" + rows)
    (tmp_path / "ms.csv").write_text("user_id,item_id,timestamp\n" + "".join(
        f"1,{i},{t * scale + scale - 1}\n" for i, t in enumerate(SECONDS, 5)))  # a fraction of a second is dropped
    seconds, scaled = read(tmp_path / "s.csv", "csv"), read(tmp_path / "ms.csv", "csv")
    assert scaled.interactions.timestamp.max() < 1e11 and scaled.timestamp_kind == "unix"
    pd.testing.assert_frame_equal(scaled.interactions, seconds.interactions)


def test_the_same_row_twice_is_stored_once_with_order_timestamps(tmp_path):
    """Small integer timestamps are classed "order": duplicates were kept, and leave-one-out then tested item 12,
    which was still in the history."""
    (tmp_path / "o.csv").write_text("user_id,item_id,timestamp\n1,10,1\n1,11,2\n1,12,3\n1,12,3\n")
    got = read(tmp_path / "o.csv", "csv")
    assert got.timestamp_kind == "order" and got.interactions.item_id.tolist() == [10, 11, 12]


def test_declared_parquet_is_read_as_parquet_whatever_the_suffix(tmp_path):
    pd.DataFrame({"user_id": [1, 2], "item_id": [5, 6], "timestamp": [1, 2]}).to_parquet(tmp_path / "x.pq")
    assert read(tmp_path / "x.pq", "parquet").interactions.item_id.tolist() == [5, 6]
    with pytest.raises(InvalidInputError, match=r"x\.pq.* Parquet.*--format parquet"):
        read(tmp_path / "x.pq", "csv")


def test_a_gzipped_tsv_is_tab_separated(tmp_path):
    pd.DataFrame({"user_id": [1, 2], "item_id": [5, 6], "timestamp": [1, 2]}).to_csv(
        tmp_path / "x.TSV.gz", sep="\t", index=False)
    assert read(tmp_path / "x.TSV.gz", "csv").interactions.item_id.tolist() == [5, 6]


def test_a_tsv_with_a_byte_order_mark_reads(tmp_path):
    (tmp_path / "x.tsv").write_bytes(b"\xef\xbb\xbfuser_id\titem_id\ttimestamp\n1\t2\t3\n")
    (tmp_path / "items.tsv").write_bytes(b"\xef\xbb\xbfitem_id\ttitle\n2\tT\n")
    got = read(tmp_path / "x.tsv", "csv", items=tmp_path / "items.tsv")
    assert got.interactions.values.tolist() == [[1, 2, 3]] and got.items.title.tolist() == ["T"]


def test_words_pandas_reads_as_missing_are_kept_as_text(tmp_path):
    (tmp_path / "i.csv").write_text("user_id,item_id,timestamp,event\n1,2,3,None\n1,3,4,NA\n")
    (tmp_path / "items.csv").write_text("item_id,title\n2,None\n3,null\n")
    got = read(tmp_path / "i.csv", "csv", items=tmp_path / "items.csv")
    assert got.items.title.tolist() == ["None", "null"]
    assert got.interactions.event.tolist() == ["None", "NA"]


def test_lastfm_tags_named_null_are_kept(tmp_path):
    """tags.dat holds a tag "null": read as missing, joining the artist's tags raised a bare TypeError."""
    d = tmp_path / "fm"
    d.mkdir()
    (d / "user_artists.dat").write_text("userID\tartistID\tweight\n2\t1\t10\n2\t2\t5\n")
    (d / "artists.dat").write_text("id\tname\turl\tpictureURL\n1\tNone\tu\tp\n2\tX\tu\tp\n")
    (d / "tags.dat").write_text("tagID\ttagValue\n1\tnull\n2\trock\n3\t\n", encoding="latin-1")
    (d / "user_taggedartists.dat").write_text(
        "userID\tartistID\ttagID\tday\tmonth\tyear\n2\t1\t1\t1\t1\t2008\n2\t1\t2\t1\t1\t2008\n2\t2\t3\t1\t1\t2008\n")
    text = read(d, "lastfm").items.set_index("item_id")["text"]
    assert text.to_dict() == {1: "None | null, rock", 2: "X"}


def _lastfm(d: Path, tagged_rows: str, tags: bytes = b"tagID\ttagValue\n1\ttrip-hop\n2\tmetal\n") -> Path:
    d.mkdir()
    (d / "user_artists.dat").write_text("userID\tartistID\tweight\n2\t52\t10\n2\t1\t5\n")
    (d / "artists.dat").write_text("id\tname\turl\tpictureURL\n1\tA\tu\tp\n52\tMorcheeba\tu\tp\n")
    (d / "tags.dat").write_bytes(tags)
    (d / "user_taggedartists.dat").write_text("userID\tartistID\ttagID\tday\tmonth\tyear\n" + tagged_rows)
    return d


def test_lastfm_rows_with_a_trailing_tab_are_read_not_shifted(tmp_path):
    """A trailing tab made pandas read the first column as an index: artistID came from tagID, tagID from the day,
    and the tags went to other artists with exit 0. Fields past the header's are not among those read."""
    good = _lastfm(tmp_path / "good", "2\t52\t1\t1\t4\t2009\n2\t1\t2\t1\t4\t2009\n")
    trailing = _lastfm(tmp_path / "trailing", "2\t52\t1\t1\t4\t2009\t\n2\t1\t2\t1\t4\t2009\t\n")
    for d in (good, trailing):
        assert read(d, "lastfm").items.set_index("item_id")["tags"].to_dict() == {1: "metal", 52: "trip-hop"}


def test_lastfm_text_files_in_utf8_keep_their_tags_and_quoted_fields_read(tmp_path):
    """tags.dat was always read as Latin-1: UTF-8 tags in other scripts became mojibake; a quoted header was
    'Usecols do not match columns' though the columns were there."""
    d = _lastfm(tmp_path / "fm", "2\t52\t1\t1\t4\t2009\n2\t1\t2\t1\t4\t2009\n",
                "tagID\ttagValue\n1\tрусский рок\n2\t日本のロック\n".encode())
    assert read(d, "lastfm").items.set_index("item_id")["tags"].to_dict() == {1: "日本のロック", 52: "русский рок"}
    (d / "user_artists.dat").write_text('"userID"\t"artistID"\t"weight"\n"2"\t"52"\t"10"\n"2"\t"1"\t"5"\n')
    assert sorted(read(d, "lastfm").interactions["item_id"]) == [1, 52]


def test_lastfm_pairs_on_two_rows_are_refused(tmp_path):
    d = _lastfm(tmp_path / "fm", "2\t52\t1\t1\t4\t2009\n")
    (d / "user_artists.dat").write_text("userID\tartistID\tweight\n2\t52\t10\n2\t1\t5\n2\t52\t10\n")
    with pytest.raises(InvalidInputError, match=r"user 2 and artist 52 have more than one row \(1 repeated"):
        read(d, "lastfm")


@pytest.mark.parametrize("content, says", [
    ("1::Иван Грозный (1944)::Drama\n2::Cr\xe8me (1999)::Comedy\n".encode().replace(b"\xc3\xa8", b"\xe8"),
     r"movies\.dat:2: not UTF-8, though most of the file is"),
    ("1::七人の侍 (1954)::Action\n2::東京物語 (1953)::Drama\n".encode("shift_jis"), "Shift-JIS, GBK"),
    ("1::Иван Грозный (1944)::Drama\n2::Сталкер (1979)::Drama\n".encode("cp1251"), "Windows-1251"),
    (b"1::Heat (1995)::Action\n2::Caf\x81 (1999)::Drama\n", r"movies\.dat:2: byte 0x81 is text in neither"),
], ids=["utf8-with-a-latin1-byte", "shift-jis", "cyrillic-1251", "undefined-byte"])
def test_a_movies_dat_in_another_encoding_is_refused_not_stored_as_mojibake(tmp_path, content, says):
    """Any bytes decode as Latin-1, so every non-UTF-8 file was read as it: a UTF-8 file with one stray byte had
    every other title stored as mojibake, Shift-JIS titles too, all with exit 0."""
    d = tmp_path / "ml"
    d.mkdir()
    (d / "movies.dat").write_bytes(content)
    with pytest.raises(InvalidInputError, match=says):
        read(d, "movielens-meta")


@pytest.mark.parametrize("titles", [["Mr. Holland’s Opus (1995)", "Amélie (2001)"],
                                    ["Ação (2001)", "Informações (1999)", "Coração (2003)"],  # accents side by side
                                    ["«ÉTÉ» (2001)", "“JOSÉ” (1999)"]],  # "É»" is also a UTF-8 character
                         ids=["quotes", "portuguese", "guillemets"])
def test_a_windows_1252_movies_dat_reads_as_written(tmp_path, titles):
    d = tmp_path / "ml"
    d.mkdir()
    (d / "movies.dat").write_bytes("".join(f"{i}::{t}::Drama\n" for i, t in enumerate(titles, 1)).encode("cp1252"))
    assert read(d, "movielens-meta").items["title"].tolist() == titles


def test_movielens_ratings_in_milliseconds_are_stored_as_seconds_and_the_file_may_be_named(tmp_path):
    d = tmp_path / "ml"
    d.mkdir()
    (d / "movies.dat").write_text("1::Heat (1995)::Action\n2::Jumanji (1995)::Adventure\n")
    (d / "ratings.dat").write_text("1::1::4::978301000123\n1::2::3::978302000999\n")
    got = read(d / "ratings.dat", "movielens-meta")  # the ratings file given: its folder is read
    assert got.interactions["timestamp"].tolist() == [978301000, 978302000] and got.timestamp_kind == "unix"
    (d / "ratings.dat").write_text("\n\n")
    with pytest.raises(InvalidInputError, match=r"ratings\.dat: no ratings"):
        read(d, "movielens-meta")


def test_iso_8601_and_fractional_unix_times_in_a_csv_are_stored_as_seconds(tmp_path):
    (tmp_path / "iso.csv").write_text("user_id,item_id,timestamp\n1,5,2023-11-14T22:13:20Z\n1,6,2023-11-14 22:14:20\n")
    assert read(tmp_path / "iso.csv", "csv").interactions["timestamp"].tolist() == [1_700_000_000, 1_700_000_060]
    (tmp_path / "frac.csv").write_text("user_id,item_id,timestamp\n1,5,1700000000.75\n1,6,1700000060.25\n")
    assert read(tmp_path / "frac.csv", "csv").interactions["timestamp"].tolist() == [1_700_000_000, 1_700_000_060]
    (tmp_path / "mixed.csv").write_text("user_id,item_id,timestamp\n1,5,2023-11-14T22:13:20Z\n1,6,soon\n")
    with pytest.raises(InvalidInputError, match="timestamp must hold integers, found '2023-11-14T22:13:20Z'"):
        read(tmp_path / "mixed.csv", "csv")


def test_a_sasrec_file_with_a_byte_order_mark_reads(tmp_path):
    (tmp_path / "s.txt").write_bytes("1 29\n1 30\n2 29\n".encode("utf-8-sig"))
    assert read(tmp_path / "s.txt", "sasrec").interactions["item_id"].tolist() == [29, 30, 29]


def _folder(root: Path, train: list[str], val_in: list[str], val_out: list[str], test: list[str],
            test_in: list[str] | None = None) -> Path:
    root.mkdir()
    files = {"train_input.txt": train, "val_input.txt": val_in, "val_output.txt": val_out, "test_output.txt": test}
    if test_in is not None:
        files["test_input.txt"] = test_in
    for name, lines in files.items():
        (root / name).write_text("".join(f"{x}\n" for x in lines))
    return root


def _roles(got) -> dict[int, list[tuple[int, str]]]:
    i = got.interactions.sort_values(["user_id", "timestamp"])
    return {u: list(zip(g["item_id"], g["split"], strict=True)) for u, g in i.groupby("user_id")}


def test_ml1m_seq_users_with_identical_train_lines_are_told_apart_by_the_validation_rows_order(tmp_path):
    """Short histories share train lines: the first user with the line took the validation rows of another
    (user 1 got user 3's), silently. The rows are in user order: users 2 < ? < 4 leaves only user 3."""
    train = ["5 6", "7 8", "5 6", "9 10"]
    got = read(_folder(tmp_path / "a", train, ["7 8 1", "5 6 2", "9 10 3"], ["11", "12", "13"],
                       ["21", "22", "23", "24"]), "ml1m-seq")
    roles = _roles(got)
    assert roles[1] == [(5, "train"), (6, "train"), (21, "test")]
    assert roles[3] == [(5, "train"), (6, "train"), (2, "val_input"), (12, "val"), (23, "test")]


def test_ml1m_seq_an_owner_neither_the_order_nor_test_input_tells_is_refused(tmp_path):
    train, test = ["5 6", "5 6", "9 10"], ["21", "22", "23"]
    ambiguous = _folder(tmp_path / "a", train, ["5 6 2", "9 10 3"], ["12", "13"], test)
    with pytest.raises(InvalidInputError, match=r"val_input line 1 extends the identical train_input lines of users "
                                                r"1 and 2, .*add test_input\.txt"):
        read(ambiguous, "ml1m-seq")
    # test_input.txt tells: a validation user's line is its val_input line and its val_output item
    told = _folder(tmp_path / "b", train, ["5 6 2", "9 10 3"], ["12", "13"], test,
                   test_in=["5 6 4", "5 6 2 12", "9 10 3 13"])
    roles = _roles(read(told, "ml1m-seq"))
    assert roles[2] == [(5, "train"), (6, "train"), (2, "val_input"), (12, "val"), (22, "test")]
    # and fills the item the folder lacks without it: user 1's test history ends with 4, not trained on
    assert roles[1] == [(5, "train"), (6, "train"), (4, "val_input"), (21, "test")]
    repeated = _folder(tmp_path / "c", ["5 6", "9 10"], ["5 6 2", "5 6 2"], ["12", "12"], ["21", "22"])
    with pytest.raises(InvalidInputError, match=r"val_input line 2 extends the train_input line of user\(s\) 1, each "
                                                r"the user of an earlier val_input line"):
        read(repeated, "ml1m-seq")


@pytest.mark.parametrize("test_in,message", [
    (["5 6 4", "9 10 3 14"], r"test_input line 2 is not user 2's val_input line and its val_output item"),
    (["5 6 4 4", "9 10 3 13"], r"test_input line 1 is not train_input line 1 and one item more"),
    (["5 6 4"], r"2 train lines but 1 test_input lines"),
])
def test_ml1m_seq_a_test_input_that_disagrees_with_the_folder_is_refused(tmp_path, test_in, message):
    folder = _folder(tmp_path / "a", ["5 6", "9 10"], ["9 10 3"], ["13"], ["21", "22"], test_in=test_in)
    with pytest.raises(InvalidInputError, match=message):
        read(folder, "ml1m-seq")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_users_rows_of_one_second_are_ordered_the_same_whatever_the_files_order(tmp_path, fmt):
    """MovieLens-10M and later list a user's ratings by movie id, and many users rate several films in one
    second: the file's order made the held-out item the highest id of the last second. Other rows keep the file's
    order, and a fold's rows (derive) still follow the parent's."""
    rows = pd.DataFrame({"user_id": [1, 1, 1, 1, 2, 2, 3], "item_id": [10, 11, 12, 13, 10, 14, 12],
                         "timestamp": [SECONDS[0], SECONDS[1], SECONDS[1], SECONDS[1], SECONDS[1], SECONDS[2],
                                       SECONDS[1]]})
    got = []
    for name, frame in (("sorted", rows), ("reversed", rows.iloc[::-1]), ("shuffled", rows.sample(frac=1,
                                                                                                     random_state=3))):
        path = tmp_path / f"{name}.{fmt}"
        frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path, index=False)
        got.append(read(path, fmt).interactions)
    for other in got[1:]:
        u1 = [x.loc[x["user_id"] == 1, "item_id"].tolist() for x in (got[0], other)]
        assert u1[0] == u1[1] and u1[0][0] == 10  # the first second's one rating stays first
    assert sorted(got[0].loc[got[0]["user_id"] == 1, "item_id"].tolist()[1:]) == [11, 12, 13]
    assert got[0].loc[got[0]["user_id"] == 2, "item_id"].tolist() == [10, 14]  # no tie: time order
