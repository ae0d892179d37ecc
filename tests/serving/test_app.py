"""The Serve application's arguments, as a hand-edited serve config gives them to `build`: refused at the
config, naming what is wrong, not in each replica after the deploy."""
import pytest
from pydantic import ValidationError

from aimass.serving.app import AppArgs


@pytest.mark.parametrize("args, says", [
    ({"family": "pipeline", "env": {"AIMASS_SERVE_MODEL": "tt/1"}}, "AIMASS_SERVE_RANKER"),
    ({"family": "sasrek", "env": {"AIMASS_SERVE_MODEL": "m/1"}}, "unknown family 'sasrek'"),
    ({"family": "sasrec", "env": {}}, "AIMASS_SERVE_MODEL"),
])
def test_a_config_the_replicas_could_not_serve_is_refused(args, says):
    with pytest.raises(ValidationError, match=says):
        AppArgs.model_validate(args)


def test_a_whole_config_passes():
    a = AppArgs.model_validate({"family": "pipeline", "env": {"AIMASS_SERVE_MODEL": "tt/1",
                                                              "AIMASS_SERVE_RANKER": "sasrec/1"}})
    assert a.family == "pipeline" and a.env["AIMASS_SERVE_RANKER"] == "sasrec/1"
