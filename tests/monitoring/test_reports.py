"""The store of drift reports and of training references: a reference is the version's whose name it bears
now, reports are kept up to Settings.monitor_keep_reports per endpoint, two reports of one second get two
folders, and a bad reference size is refused before the cache is touched."""
from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from aimass import monitoring, registry
from aimass.errors import InvalidInputError
from aimass.monitoring import _reference

REF = 400  # as test_drift's: the cached reference is shared


@pytest.fixture(scope="module")
def served(home) -> str:
    rng = np.random.default_rng(11)
    home.serve("kept", [(int(u), None) for u in rng.choice(home.users, 60)])
    return "kept"


def test_a_cached_reference_built_from_another_version_of_the_name_is_rebuilt(home):
    """Another tracking store (or a wiped one) numbers its versions from 1 again: recs/1 is then another model,
    and its cached reference, kept by name, was another model's answers."""
    ref = _reference.get("recs", 1, home.settings, REF)
    meta_path = _reference.folder(home.settings, "recs", 1) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["identity"] = {**meta.get("identity", {}), "run_id": "another-stores-run"}
    meta_path.write_text(json.dumps(meta))
    rebuilt = _reference.get("recs", 1, home.settings, REF)
    assert rebuilt.build_seconds is not None  # not the cached one
    now = json.loads(meta_path.read_text())["identity"]
    assert now["run_id"] == registry.get("recs/1", settings=home.settings).run_id and now["dataset"] == "demo@v1"
    assert _reference.get("recs", 1, home.settings, REF).build_seconds is None  # cached again, as itself
    assert list(rebuilt.rows["items"]) == list(ref.rows["items"])  # the same version: the same answers

    del meta["identity"]  # a cache made before the record: not known to be this version's, so rebuilt once
    meta_path.write_text(json.dumps(meta))
    assert _reference.get("recs", 1, home.settings, REF).build_seconds is not None


@pytest.mark.parametrize("users", [0, -5, 1.5, True, "400"])
def test_a_bad_reference_size_is_refused_before_the_cached_reference_is_touched(home, served, users):
    """0 rebuilt the version's good cached reference as an empty one; a negative size failed in numpy after
    loading the model."""
    _reference.get("recs", 1, home.settings, REF)
    meta = _reference.folder(home.settings, "recs", 1) / "meta.json"
    before = meta.read_text()
    with pytest.raises(InvalidInputError, match="reference_users must be a whole number of at least 1"):
        monitoring.drift(served, reference_users=users, settings=home.settings)
    assert meta.read_text() == before


def test_only_the_newest_reports_are_kept(home, served):
    s = home.settings.model_copy(update={"monitor_keep_reports": 2})
    made = [monitoring.drift(served, reference_users=REF, settings=s) for _ in range(3)]
    root = home.settings.home / "monitoring" / served
    assert sorted(p.name for p in root.iterdir()) == sorted(Path(r.html).parent.name for r in made[1:])
    assert [r.html for r in monitoring.reports(served, settings=s)] == [made[2].html, made[1].html]


def _report(root: Path, name: str) -> Path:
    (root / name).mkdir(parents=True)
    for f in ("report.html", "report.json", "summary.json"):
        (root / name / f).write_text("{}")
    return root / name


def test_pruning_keeps_the_newest_the_one_written_and_those_being_written(tmp_path, monkeypatch):
    from aimass.monitoring import _prune

    root = tmp_path / "monitoring" / "recs"
    names = ["20260101T000000Z", "20260101T000000Z-2", "20260101T000000Z-10", "20260102T000000Z",
             "20260103T000000Z"]
    for n in names:
        _report(root, n)
    (root / "20260104T000000Z.tmp").mkdir()  # another process's report, being written
    (root / ".20251231T000000Z.removing-dead").mkdir()  # a removal a killed process left
    written = _report(root, "20251230T000000Z")  # just written, under a clock set back: the oldest name

    # another process's pruning removes 20260101T000000Z-2 while this one lists and removes
    real_rename = Path.rename

    def racing(self, target):
        if self.name == "20260101T000000Z-2":
            shutil.rmtree(self)
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", racing)
    removed = _prune(root, 3, written)
    assert sorted(p.name for p in removed) == ["20260101T000000Z", "20260101T000000Z-10"]
    assert sorted(p.name for p in root.iterdir()) == ["20251230T000000Z", "20260102T000000Z", "20260103T000000Z",
                                                      "20260104T000000Z.tmp"]


def test_two_reports_in_one_second_get_two_folders_when_one_lands_between_the_check_and_the_reservation(
        settings, monkeypatch):
    """Another process renames its STAMP.tmp into STAMP after this one found no STAMP and before its mkdir of
    STAMP.tmp (free again): both held STAMP, and the second report's final rename failed."""
    from aimass.monitoring import _report_folder

    created = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    real_mkdir = Path.mkdir

    def other_process_lands(self, *args, **kwargs):
        if self.name == "20260101T120000Z.tmp" and not self.with_name("20260101T120000Z").exists():
            _report(self.parent, "20260101T120000Z")  # its tmp, renamed into place
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", other_process_lands)
    folder, tmp = _report_folder(settings, "recs", created)
    assert (folder.name, tmp.name) == ("20260101T120000Z-2", "20260101T120000Z-2.tmp") and tmp.is_dir()
    assert not folder.with_name("20260101T120000Z.tmp").exists()  # the reservation given back
    (tmp / "summary.json").write_text("{}")
    tmp.rename(folder)


def test_a_window_of_short_lists_is_measured_on_its_full_ones(home):
    """Clients asking for 5 items: their lists are left out of coverage and diversity (which they would halve),
    and the report says how many."""
    rng = np.random.default_rng(12)
    users = rng.choice(home.users, 80)
    for i, u in enumerate(users):
        out = home.engine.recommend(user_id=int(u), history=None, k=5 if i % 2 else 10)
        home.log.record("short", f"short{i}", "recommend", "recs", 1, int(u), out["history_tail"], out["items"],
                        out["scores"], out["strategy"], history_length=out["history_length"])
    home.log.flush()
    r = monitoring.drift("short", reference_users=REF, settings=home.settings)
    assert r.current["answers"] == r.reference["answers"] == 40  # both sides at the window's count of full lists
    assert (r.current["short_lists"], r.reference["short_lists"]) == (40, 0)
    assert abs(r.current["coverage"] - r.reference["coverage"]) < 0.1
