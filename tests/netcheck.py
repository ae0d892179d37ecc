"""What the tests start may listen on loopback only (../shared/STACK.md, 'Network hygiene')."""
from __future__ import annotations

import ipaddress
import os

import psutil


def listeners(root_pid: int | None = None) -> list[tuple[int, str, str, int]]:
    """(pid, process name, address, port) of every listening TCP socket in the process tree of `root_pid`."""
    root = psutil.Process(root_pid or os.getpid())
    procs = [root, *root.children(recursive=True)]
    pids = {p.pid: p for p in procs}
    out = []
    for c in psutil.net_connections(kind="tcp"):
        if c.status == psutil.CONN_LISTEN and c.pid in pids:
            try:
                name = pids[c.pid].name()
            except psutil.Error:
                name = "?"
            out.append((c.pid, name, c.laddr.ip, c.laddr.port))
    return out


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is loopback too
    return (mapped or ip).is_loopback


def non_loopback(found: list[tuple[int, str, str, int]]) -> list[tuple[int, str, str, int]]:
    return [x for x in found if not is_loopback(x[2])]


class Sampler:
    """Samples this process tree's listeners every 0.2 s while a job runs, with the remote addresses of the
    connections a non-loopback listener accepts; `check()` then allows only the one known exception."""

    def __enter__(self):
        import threading

        self.seen: set = set()
        self.peers: dict = {}  # (pid, port) of a wildcard listener -> remote addresses of its connections
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()

    def _run(self) -> None:
        while not self.done.is_set():
            found = listeners()
            self.seen.update(found)
            wild = {x[3]: (x[0], x[3]) for x in non_loopback(found)}
            for c in psutil.net_connections(kind="tcp"):
                if c.status == psutil.CONN_ESTABLISHED and c.laddr.port in wild:
                    self.peers.setdefault(wild[c.laddr.port], set()).add(c.raddr.ip)
            self.done.wait(0.2)

    def check(self) -> None:
        bad = non_loopback(sorted(self.seen))
        # torch's TCPStore (the process group's rendezvous, in the rank-0 Ray Train worker) binds *:PORT with no
        # option to change it (../shared/STACK.md). It is the one known exception, and only while every
        # connection it accepts comes from loopback (MASTER_ADDR is 127.0.0.1); anything else fails.
        sockets = {(pid, port): name for pid, name, _, port in bad}  # a Ray worker's title changes per task
        assert len(sockets) <= 1, bad
        for (pid, port), name in sockets.items():
            assert name.startswith("ray::"), bad
            assert self.peers.get((pid, port)), f"no connection to {name}:{port} was seen: cannot tell what it is"
            assert all(is_loopback(ip) for ip in self.peers[(pid, port)]), self.peers
