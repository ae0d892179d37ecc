from __future__ import annotations

import typer

from aimass.cli._common import JSON, emit, state
from aimass.errors import InvalidInputError


def console(port: int = typer.Option(None, "--port", min=1, max=65535,
                                     help="HTTP port (default $AIMASS_CONSOLE_PORT or 8501)"),
            detach: bool = typer.Option(False, "--detach", help="Leave it running in the background"),
            stop: bool = typer.Option(False, "--stop", help="Stop this home's console"),
            as_json: bool = JSON):
    """The operator console (Streamlit) on 127.0.0.1 (AIMASS_HOST: its read pages need no key, so another
    address opens them to that network), its URL printed: deployments and their golden signals,
    datasets, runs and models, traffic. Runs until Ctrl-C, or with --detach in the background until
    `aimass console --stop`."""
    from aimass import console as term
    from aimass import dashboard

    s = state.settings
    if stop:
        if detach or port is not None:  # asked for a console it would not start
            raise InvalidInputError("--stop cannot be given with --detach or --port")
        emit({"stopped": dashboard.stop(s)}, as_json)
        return
    running = dashboard.status(s)
    already = running is not None
    if already and port is not None and not running["url"].endswith(f":{port}"):
        from aimass.errors import ConflictError

        raise ConflictError(f"this home's console already runs at {running['url']}, not on port {port}: stop it "
                            "first (aimass console --stop) to start it there")
    if not already:
        term.stage(f"starting the console on {s.host} (log: {s.home / 'logs' / 'console.log'})")
    info = dashboard.start(s, port=port)
    foreground = not (detach or already)
    try:  # from the moment it runs: an interrupt while the URL is printed stops it too
        emit({"url": info["url"], "pid": info["pid"], "already_running": already}, as_json,
             [f"console  {info['url']}" + (" (already running)" if already else ""),
              "stop:    Ctrl-C" if foreground else "stop:    aimass console --stop"])
        if foreground:
            import psutil

            code = psutil.Process(info["pid"]).wait()
            # negative: a signal stopped it (`aimass console --stop`, a kill), as asked; a positive code is
            # Streamlit failing by itself, which a supervisor or script must see as a failure
            if code is not None and code > 0:
                from aimass.errors import BackendError

                raise BackendError(f"the console stopped by itself with exit code {code}: see its log "
                                   f"{info.get('log') or s.home / 'logs' / 'console.log'}")
    except KeyboardInterrupt:
        pass
    finally:
        if foreground:
            dashboard.stop(s)
