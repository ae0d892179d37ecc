"""Bad input refused before any stage line: settings, compress options, train/retrain/compress option values.
Nothing here trains, registers or deploys: each refusal comes before any work."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from aimass.errors import InvalidInputError
from tests.cli.test_datasets_cli import run


def _one_line(res, code: int, *needles: str) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == code and len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert all(n in lines[0] for n in needles), lines[0]
    assert res.stdout == "", res.stdout  # no stage line before the refusal
    return lines[0]


def _invoke(tmp_path, *args: str):
    from aimass.cli import app

    return CliRunner().invoke(app, ["--home", str(tmp_path / "home"), *args])


def test_bad_settings_are_one_line_naming_each_field_without_values(tmp_path):
    res = run(tmp_path / "home", "datasets", "list", ok=False,
              env={"AIMASS_CATALOG_URL": "notaurl", "AIMASS_SERVE_PORT": "eighty"})
    line = _one_line(res, 2, "invalid settings: ", "catalog_url: not a SQLAlchemy URL", "; serve_port: ")
    assert "notaurl" not in line and "eighty" not in line and "errors.pydantic.dev" not in line
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("key", ["progress", "settings", "name", "version", "method", "family"])
def test_compress_refuses_an_option_named_like_its_own_arguments(tmp_path, key):
    r = _invoke(tmp_path, "models", "compress", "m", "1", "-m", "int8", "-o", f"{key}=1")
    assert isinstance(r.exception, InvalidInputError), (r.exception, r.output)
    assert f"--option {key}" in str(r.exception) and r.stdout == ""


def test_compress_reserved_option_through_the_entry_point(tmp_path):
    res = run(tmp_path / "home", "models", "compress", "m", "1", "-m", "int8", "-o", "progress=1", ok=False)
    line = _one_line(res, 2, "--option progress")
    assert "TypeError" not in line


@pytest.mark.parametrize("args,needle", [
    (("train", "sasrec", "-d", "demo", "--epochs", "0"), "epochs must be at least 1"),
    (("train", "sasrec", "-d", "demo", "--time-budget", "0"), "--time-budget must be a positive"),
    (("train", "sasrec", "-d", "demo", "--workers", "-1"), "workers must be 0"),
    (("train", "sasrec", "-d", "demo", "-p", "dim=-3"), "invalid params for sasrec"),
    (("retrain", "demo", "--time-budget", "0"), "--time-budget must be a positive"),
    (("train", "auto", "-d", "demo", "--time-budget", "1", "--no-item-text"), "no --param, --gpu, --item-text"),
    (("train", "--resume", "abc", "--item-text"), "--item-text cannot be given"),
])
def test_bad_train_and_retrain_options_are_one_line_before_any_lookup(tmp_path, args, needle):
    # exit 2 (the option), not 3: checked before the dataset or endpoint is looked up, let alone announced
    _one_line(run(tmp_path / "home", *args, ok=False), 2, needle)


@pytest.mark.parametrize("args", [
    ("train", "sasrec", "-d", "demo", "--epochs", "0"),
    ("train", "sasrec", "-d", "demo", "--time-budget", "0"),
    ("train", "sasrec", "-d", "demo", "--workers", "-1"),
    ("retrain", "demo", "--time-budget", "0"),
    ("models", "compress", "m", "1", "-m", "bogus"),
])
def test_bad_options_of_existing_things_print_no_stage_line(tmp_path, monkeypatch, args):
    """The dataset, endpoint and model exist (their lookups pass): the refusal still comes first."""
    from aimass import datasets, registry, serving

    monkeypatch.setattr(datasets, "get", lambda ref, settings=None: SimpleNamespace(ref=ref))
    monkeypatch.setattr(serving, "check_deployed", lambda endpoint, settings=None: endpoint)
    monkeypatch.setattr(registry, "get", lambda ref, settings=None: SimpleNamespace(
        ref=ref, family="sasrec", method="original", dataset="demo@v1", run_id=None, metrics={}))
    r = _invoke(tmp_path, *args)
    assert isinstance(r.exception, InvalidInputError), (r.exception, r.output)
    assert r.stdout == "", r.stdout


def test_reports_of_an_endpoint_never_deployed_are_not_found_not_an_empty_list(tmp_path):
    _one_line(run(tmp_path / "home", "monitor", "reports", "nope", ok=False), 3, "no deployment named 'nope'")
