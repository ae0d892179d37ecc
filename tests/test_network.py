import pytest

from aimass import _ray
from tests.netcheck import is_loopback, listeners, non_loopback


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


@pytest.mark.integration
def test_a_two_worker_training_job_listens_on_loopback_only(settings, tmp_path):
    """Sampled while Ray Train runs a 2-worker job (process group, checkpoints, MLflow logging)."""
    import threading

    import psutil

    import aimass

    inter, items = aimass.datasets.generate_demo(tmp_path / "d", aimass.datasets.DemoConfig(users=40, tracks=80))
    aimass.datasets.register("demo", inter, "csv", settings=settings)
    seen: set = set()
    peers: dict = {}  # (pid, port) of a wildcard listener -> remote addresses of its connections
    done = threading.Event()

    def sample():
        while not done.is_set():
            found = listeners()
            seen.update(found)
            wild = {x[3]: (x[0], x[3]) for x in non_loopback(found)}
            for c in psutil.net_connections(kind="tcp"):
                if c.status == psutil.CONN_ESTABLISHED and c.laddr.port in wild:
                    peers.setdefault(wild[c.laddr.port], set()).add(c.raddr.ip)
            done.wait(0.2)

    t = threading.Thread(target=sample)
    t.start()
    try:
        aimass.train("itemknn", "demo", workers=2, progress=False, settings=settings)
    finally:
        done.set()
        t.join()
        import ray

        ray.shutdown()
    bad = non_loopback(sorted(seen))
    # torch's TCPStore (the process group's rendezvous, in the rank-0 Ray Train worker) binds *:PORT with no
    # option to change it (../shared/STACK.md). It is the one known exception, and only while every
    # connection it accepts comes from loopback (MASTER_ADDR is 127.0.0.1); anything else fails.
    sockets = {(pid, port): name for pid, name, _, port in bad}  # a Ray worker's title changes per task
    assert len(sockets) <= 1, bad
    for (pid, port), name in sockets.items():
        assert name.startswith("ray::"), bad
        assert peers.get((pid, port)), f"no connection to {name}:{port} was seen: cannot tell what it is"
        assert all(is_loopback(ip) for ip in peers[(pid, port)]), peers
    assert len(seen) > 5
