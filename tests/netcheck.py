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
