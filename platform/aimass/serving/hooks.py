"""Ray worker set-up hook of the serving cluster (`worker_process_setup_hook`): keeps every listener a
Serve deployment starts on loopback (../shared/STACK.md, "Network hygiene"). It must live in an installed
module: Ray imports it by name in each worker before any user code runs."""
from __future__ import annotations

import re

LOOPBACK = "127.0.0.1"
FRONTEND = "    bind {{ config.frontend_host }}:{{ config.frontend_port }}\n"
# Rules for every request at HAProxy's frontend. Without the header a replica starts a task per request that
# watches for the client's disconnect, and waits on both: an event-loop round trip of every request, for answers
# that take milliseconds. A client that goes away no longer cancels its request, which then completes (a
# /feedback batch is stored as sent). dontlog-normal: HAProxy's log line of each request goes to syslog at
# 127.0.0.1:514 (Ray's RAY_SERVE_HAPROXY_LOG_TARGET), formatted and sent for every request, into the host's
# system log where one listens; requests that succeed are no longer logged (errors, timeouts and aborts are), as
# Serve's own access log is off (/metrics counts requests and the served-answer log keeps them).
PER_REQUEST = ("    http-request set-header x-request-disconnect-disabled ?1\n"
               "    option dontlog-normal\n")
# A path no endpoint serves (a typo'd endpoint) is answered as every error of the API is, {"error": "..."}, not
# with HAProxy's plain text that points at Serve's /-/routes; the path is escaped for JSON by HAProxy's converter
NOT_FOUND = re.compile(r"^    http-request return status 404 content-type text/plain .*-/routes.*$", re.M)
JSON_NOT_FOUND = (r'    http-request return status 404 content-type application/json lf-string "{\"error\": \"no '
                  r'endpoint serves the path %[path,json(utf8ps)]: aimass deployments list names the endpoints, each '
                  r'at /ENDPOINT\"}"')


def loopback() -> None:
    # Replicas open their inter-deployment gRPC server on "[::]:0" (hard-coded in replica.py).
    from ray.serve._private import replica

    if not getattr(replica.add_port_to_grpc_server, "_aimass", False):
        original = replica.add_port_to_grpc_server

        def bind_loopback(server, address: str):
            return original(server, address.replace("[::]", LOOPBACK).replace("0.0.0.0", LOOPBACK))

        bind_loopback._aimass = True
        replica.add_port_to_grpc_server = bind_loopback

    # Ray's HAProxy template binds its stats and Prometheus ports to every interface ("bind *:PORT",
    # "bind :PORT"). Patched before ray.serve._private.haproxy imports the template.
    from ray.serve._private import haproxy_templates as t

    if PER_REQUEST not in t.HAPROXY_CONFIG_TEMPLATE:  # once per process
        t.HAPROXY_CONFIG_TEMPLATE = NOT_FOUND.sub(
            lambda _: JSON_NOT_FOUND, t.HAPROXY_CONFIG_TEMPLATE.replace("bind *:", f"bind {LOOPBACK}:")
            .replace("bind :", f"bind {LOOPBACK}:").replace(FRONTEND, FRONTEND + PER_REQUEST))
    haproxy = __import__("sys").modules.get("ray.serve._private.haproxy")
    if haproxy is not None:  # already imported in this worker: patch its copy too
        haproxy.HAPROXY_CONFIG_TEMPLATE = t.HAPROXY_CONFIG_TEMPLATE
