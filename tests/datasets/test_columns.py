"""A csv or Parquet file with its own column names (MovieLens-25M's userId/movieId/rating, say) registers
through a declared mapping; nothing is renamed by guesswork, and a refusal proposes the mapping."""
from __future__ import annotations

import pandas as pd
import pytest

from aimass.datasets import parse_columns
from aimass.datasets._formats import read
from aimass.errors import InvalidInputError

ML25 = {"userId": "user_id", "movieId": "item_id", "rating": "value"}


@pytest.fixture
def ml25(tmp_path):
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("userId,movieId,rating,timestamp\n1,10,4.5,1100000000\n1,20,3.0,1100000060\n"
                       "2,10,5.0,1100000120\n")
    movies = tmp_path / "movies.csv"
    movies.write_text('movieId,title,genres\n10,"Matrix, The (1999)",Action|Sci-Fi\n20,Amélie (2001),Comedy\n')
    return ratings, movies


def _canonical(ratings):
    """The ratings under the canonical names, beside the same movies.csv."""
    out = ratings.with_name("canonical.csv")
    pd.read_csv(ratings).rename(columns=ML25).to_csv(out, index=False)
    return out


def test_a_declared_mapping_renames_the_interactions_and_the_items_file(ml25):
    ratings, movies = ml25
    got = read(ratings, "csv", movies, ML25)
    i = got.interactions
    assert list(i.columns[:3]) == ["user_id", "item_id", "timestamp"]
    assert i["value"].tolist() == [4.5, 3.0, 5.0] and i["user_id"].tolist() == [1, 1, 2]
    assert got.items.set_index("item_id")["title"].to_dict() == {10: "Matrix, The (1999)", 20: "Amélie (2001)"}
    dropped = read(ratings, "csv", None, {**ML25, "rating": "-"}).interactions
    assert "value" not in dropped.columns and len(dropped) == 3


def test_parquet_takes_the_same_mapping(ml25, tmp_path):
    ratings, _ = ml25
    pd.read_csv(ratings).to_parquet(tmp_path / "r.parquet")
    assert read(tmp_path / "r.parquet", "parquet", None, ML25).interactions["item_id"].tolist() == [10, 20, 10]


def test_without_a_mapping_the_refusal_proposes_one(ml25):
    ratings, movies = ml25
    with pytest.raises(InvalidInputError, match=r"missing column\(s\) user_id, item_id \(the header: userId, "
                                                r"movieId, rating, timestamp; register it with --columns "
                                                r"userId=user_id,movieId=item_id,rating=value\)"):
        read(ratings, "csv")
    with pytest.raises(InvalidInputError, match=r"unexpected column\(s\) rating; .*for example rating=-"):
        read(ratings, "csv", None, {"userId": "user_id", "movieId": "item_id"})
    with pytest.raises(InvalidInputError, match=r"items file .*movies\.csv: missing column item_id .*"
                                                r"--columns movieId=item_id\)"):
        read(_canonical(ratings), "csv", movies)


@pytest.mark.parametrize("columns,message", [
    ({"userid": "user_id", "movieId": "item_id"}, r"columns names userid, which no file has"),
    ({"userId": "user", "movieId": "item_id"}, r"target must be one of user_id, item_id"),
    ({"userId": "user_id", "movieId": "user_id"}, r"more than one column mapped to user_id"),
    ({"userId": "user_id", "movieId": "item_id", "rating": "timestamp"}, r"to timestamp, which the file already"),
])
def test_a_bad_mapping_is_refused_naming_it(ml25, columns, message):
    with pytest.raises(InvalidInputError, match=message):
        read(ml25[0], "csv", None, columns)


def test_fixed_layouts_refuse_a_mapping_and_the_cli_text_is_parsed(tmp_path):
    with pytest.raises(InvalidInputError, match=r"lastfm: columns are mapped only for csv and parquet"):
        read(tmp_path, "lastfm", None, {"userID": "user_id"})
    assert parse_columns(" userId=user_id, movieId = item_id ,rating=-") == {
        "userId": "user_id", "movieId": "item_id", "rating": "-"}
    with pytest.raises(InvalidInputError, match=r"'userId' is not SOURCE=TARGET"):
        parse_columns("userId")


def test_movielens_meta_on_a_folder_of_csv_files_names_the_csv_registration(ml25):
    ratings, movies = ml25
    with pytest.raises(InvalidInputError, match=r"has no movies\.dat but a ratings\.csv .*--format csv --items "
                                                r".*movies\.csv --columns userId=user_id,movieId=item_id"):
        read(ratings.parent, "movielens-meta")
    with pytest.raises(InvalidInputError, match=r"has no movies\.dat but a ratings\.csv"):
        read(movies, "movielens-meta")
    got = read(ratings, "csv", movies, ML25)  # the registration it names
    assert got.stats() == {"n_rows": 3, "n_users": 2, "n_items": 2}
