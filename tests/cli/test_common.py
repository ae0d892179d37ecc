from aimass.cli._common import rows


def test_tables_round_floats_to_four_decimals_without_padding_them():
    out = rows([{"name": "a", "ndcg": 0.123456, "minutes": 0.2, "n": 3},
                {"name": "bb", "ndcg": float("nan"), "minutes": 12.0, "n": 10}], ["name", "ndcg", "minutes", "n"])
    assert out[0].split() == ["NAME", "NDCG", "MINUTES", "N"]
    assert out[1].split() == ["a", "0.1235", "0.2", "3"]  # 0.2 minutes is not 0.2000
    assert out[2].split() == ["bb", "nan", "12.0", "10"]
    assert not any(line.endswith(" ") for line in out)


def test_a_missing_value_is_a_dash_not_pythons_none():
    out = rows([{"name": "a", "ranker": None, "ndcg": None}], ["name", "ranker", "ndcg"])
    assert out[1].split() == ["a", "-", "-"]
