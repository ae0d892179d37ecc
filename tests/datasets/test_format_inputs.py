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
