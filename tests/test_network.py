import pytest

from aimass import _ray
from tests.netcheck import listeners, non_loopback


@pytest.mark.integration
def test_local_ray_listens_on_loopback_only(settings):
    ray = _ray.init(settings, num_cpus=1)
    try:
        @ray.remote
        def ping():
            return "pong"

        assert ray.get(ping.remote()) == "pong"  # workers up, so their listeners exist too
        found = listeners()
        assert len(found) >= 3, found  # GCS, raylet, object manager at least: the check sees Ray's sockets
        assert non_loopback(found) == []
    finally:
        ray.shutdown()


def test_the_check_catches_a_wildcard_listener():
    import socket

    s = socket.socket()
    s.bind(("0.0.0.0", 0))
    s.listen()
    try:
        bad = non_loopback(listeners())
        assert [(a, p) for _, _, a, p in bad] == [("0.0.0.0", s.getsockname()[1])]
    finally:
        s.close()


# A two-worker training job (process group, checkpoints, MLflow logging) is sampled by
# tests/training/test_train.py::test_each_kind_of_family_trains_on_two_workers_and_is_tracked (netcheck.Sampler).
