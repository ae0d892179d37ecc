import pandas as pd
import pydantic
import pytest

from aimass.datasets import DemoConfig, generate_demo
from aimass.errors import InvalidInputError


def test_demo_is_seeded_and_deterministic(tmp_path):
    a = generate_demo(tmp_path / "a", DemoConfig(users=50, tracks=200, seed=3))
    b = generate_demo(tmp_path / "b", DemoConfig(users=50, tracks=200, seed=3))
    c = generate_demo(tmp_path / "c", DemoConfig(users=50, tracks=200, seed=4))
    assert a[0].read_bytes() == b[0].read_bytes() and a[1].read_bytes() == b[1].read_bytes()
    assert a[0].read_bytes() != c[0].read_bytes()


def test_demo_has_learnable_sequential_and_genre_structure(tmp_path):
    inter, items = generate_demo(tmp_path, DemoConfig(users=200, tracks=500, seed=0))
    df, it = pd.read_csv(inter), pd.read_csv(items).set_index("item_id")
    assert df.groupby("user_id").item_id.apply(lambda s: s.is_unique).all()  # a track once per user
    df = df.sort_values(["user_id", "timestamp"], kind="stable")
    nxt = df.groupby("user_id").item_id.shift(-1)
    pairs = df.assign(nxt=nxt).dropna()
    album_next = (pairs.nxt == pairs.item_id + 1).mean()
    same_genre = (it.loc[pairs.item_id, "genre"].values == it.loc[pairs.nxt.astype(int), "genre"].values).mean()
    # random successors would give ~1/500 and ~1/12; the generator's rules give far more
    assert album_next > 0.2 and same_genre > 0.5
    assert set(it.columns) >= {"title", "artist", "genre", "tags", "text"}


def test_demo_with_a_negative_seed_is_refused():
    with pytest.raises(pydantic.ValidationError, match="seed"):
        DemoConfig(users=50, tracks=200, seed=-1)
    assert DemoConfig(users=50, tracks=200, seed=0).seed == 0


def test_demo_into_an_existing_file_is_refused_before_anything_is_generated(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    with pytest.raises(InvalidInputError, match="is a file: the demo dataset is written into a folder"):
        generate_demo(target, DemoConfig(users=50, tracks=200, seed=1))
    assert target.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    with pytest.raises(InvalidInputError, match="cannot create the folder .*notes.txt/demo"):  # under a file
        generate_demo(target / "demo", DemoConfig(users=50, tracks=200, seed=1))


def test_mean_history_is_documented_as_the_median_it_is(tmp_path):
    """History lengths are lognormal around `mean_history`: it is their median, their mean is ~1.2x higher."""
    from typer.testing import CliRunner

    from aimass.cli.datasets import app

    inter, _ = generate_demo(tmp_path, DemoConfig(users=300, tracks=4000, mean_history=40, seed=0))
    lengths = pd.read_csv(inter).groupby("user_id").size()
    assert abs(lengths.median() - 40) <= 4 and lengths.mean() > 45
    assert DemoConfig.model_fields["mean_history"].description.startswith("median plays per user")
    shown = CliRunner().invoke(app, ["generate-demo", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert shown.exit_code == 0 and "Median plays per user" in shown.output and "Mean plays" not in shown.output
