"""aimass._ray: a job's Ray is its own local one (or the configured cluster), never one the process happened to
be attached to."""
import pytest

from aimass import _ray


@pytest.mark.integration
def test_a_process_attached_to_another_cluster_starts_its_own_and_keeps_it(settings):
    import ray

    ray.init(num_cpus=3, include_dashboard=False, _node_ip_address="127.0.0.1")  # another cluster: a serving head
    try:
        other = ray.get_runtime_context().gcs_address
        mine = _ray.init(settings, num_cpus=1)
        assert ray.get_runtime_context().gcs_address != other
        assert mine.cluster_resources().get("CPU") == 1  # sized as asked, not as the cluster it was attached to
        own = ray.get_runtime_context().gcs_address
        assert _ray.init(settings).get_runtime_context().gcs_address == own  # idempotent on its own
    finally:
        ray.shutdown()


def test_a_configured_cluster_that_does_not_answer_fails_at_once(tmp_path):
    import socket

    import ray

    from aimass.errors import BackendError
    from aimass.settings import Settings

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(BackendError, match=f"127.0.0.1:{port}.*does not answer"):
        _ray.init(Settings(home=tmp_path / "home", ray_address=f"127.0.0.1:{port}"))
    assert not ray.is_initialized()
    assert _ray.answers("auto") and _ray.answers("ray://cluster.example")  # Ray's to resolve: never refused here
