"""`aimass.console.setup`: what a library, a warning or a child process writes lands in the home's log, never on
the real stdout; --verbose copies it to the real stderr; with --json stdout holds only the JSON."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROGRAM = """
import logging, subprocess, sys, warnings
from aimass import console
console.setup(sys.argv[1], verbose=sys.argv[2] == "1", as_json=sys.argv[3] == "1")
print("library print")
logging.getLogger("somelib").info("library log")
warnings.warn("library warning")
subprocess.run([sys.executable, "-c", "import sys; print('child out'); print('child err', file=sys.stderr)"])
console.stage("stage line")
console.result('{"ok": true}')
console.error("error line")
"""
CHATTER = ["library print", "library log", "library warning", "child out", "child err"]


@pytest.mark.parametrize("verbose", [False, True])
@pytest.mark.parametrize("as_json", [False, True])
def test_library_output_goes_to_the_log_and_only_results_to_stdout(tmp_path, verbose, as_json):
    res = subprocess.run([sys.executable, "-c", PROGRAM, str(tmp_path), str(int(verbose)), str(int(as_json))],
                         capture_output=True, text=True, timeout=60, umask=0o022)
    assert res.returncode == 0, res.stderr
    if as_json:
        assert json.loads(res.stdout) == {"ok": True}
    else:
        assert res.stdout.splitlines() == ["stage line", '{"ok": true}']
    log = (tmp_path / "logs" / "aimass.log").read_text()
    assert (tmp_path / "logs" / "aimass.log").stat().st_mode & 0o777 == 0o600  # tee's copy too (umask 022)
    assert [line for line in CHATTER + ["stage line", "error line"] if line not in log] == [], log
    shown = [line for line in CHATTER if line in res.stderr]
    assert shown == (CHATTER if verbose else []), res.stderr
    assert "error line" in res.stderr.splitlines()


def test_a_key_on_the_command_line_is_logged_as_its_id(tmp_path):
    """`aimass keys revoke KEY` takes the full key too: the log's copy of the command line keeps its id only."""
    key = "aimass_0123456789ab_" + "S" * 43
    program = ("import sys\nfrom aimass import console\nhome, key = sys.argv[1], sys.argv[2]\n"
               "sys.argv = ['aimass', 'keys', 'revoke', key]\nconsole.setup(home, verbose=False, as_json=False)\n")
    res = subprocess.run([sys.executable, "-c", program, str(tmp_path), key], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    log = (tmp_path / "logs" / "aimass.log").read_text()
    assert "aimass keys revoke aimass_0123456789ab_<secret>" in log and "S" * 43 not in log
