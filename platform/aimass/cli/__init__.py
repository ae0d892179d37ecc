"""The `aimass` command line. Settings are parsed here, once, and passed down; heavy modules are imported
inside commands so that `aimass --help` stays fast."""
from __future__ import annotations

import functools
import logging
import sys
from typing import Any

import typer

from aimass import console
from aimass.cli._common import state
from aimass.cli.dashboard import console as console_command
from aimass.cli.datasets import app as datasets_app
from aimass.cli.deploy import app as deployments_app
from aimass.cli.deploy import deploy
from aimass.cli.doctor import doctor
from aimass.cli.experiments import app as experiments_app
from aimass.cli.feedback import app as feedback_app
from aimass.cli.keys import app as keys_app
from aimass.cli.models import app as models_app
from aimass.cli.monitor import app as monitor_app
from aimass.cli.quickstart import quickstart
from aimass.cli.retrain import retrain
from aimass.cli.traffic import app as traffic_app
from aimass.cli.traffic import rollback
from aimass.cli.train import runs_app, train

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="aimass: model-as-a-service for recommendation and search models.")
app.add_typer(datasets_app, name="datasets", help="Register, list and load dataset versions (DVC).")
app.command()(doctor)
app.command()(quickstart)
app.command()(train)
app.add_typer(runs_app, name="runs", help="Training runs tracked in MLflow.")
app.add_typer(models_app, name="models", help="Registered model versions, aliases and promotion.")
app.command()(deploy)
app.add_typer(deployments_app, name="deployments", help="Served endpoints on Ray Serve.")
app.add_typer(keys_app, name="keys", help="API keys of the served endpoints.")
app.add_typer(feedback_app, name="feedback", help="Feedback events of the endpoints: ingest, list, stats.")
app.add_typer(monitor_app, name="monitor", help="Drift reports and online metrics of served endpoints.")
app.add_typer(traffic_app, name="traffic",
              help="Traffic splits across model versions: set, show (and `aimass rollback`).")
app.add_typer(experiments_app, name="experiments",
              help="A/B experiments on an endpoint's traffic: start, show, stop.")
app.command()(retrain)
app.command()(rollback)
app.command(name="console")(console_command)


@app.callback()
def _root(home: str = typer.Option(None, "--home", help="State folder (default $AIMASS_HOME or .aimass)"),
          verbose: bool = typer.Option(False, "--verbose", "-v",
                                       help="Also show library logs and workers' output (always in HOME/logs)")):
    from aimass.settings import Settings, unknown_variables

    try:
        state.settings = Settings(home=home) if home is not None else Settings()
    except Exception as e:  # a bad AIMASS_* variable is the user's input too
        typer.echo(f"error: invalid settings: {_settings_problems(e)}", err=True)
        raise typer.Exit(2) from None
    problem = unknown_variables() or _unusable(state.settings.home)
    if problem:
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2)
    state.verbose = verbose


def _settings_problems(e: Exception) -> str:
    """One line, "field: message; ...", without the values (a URL may hold a password): pydantic's own text
    spreads each error over lines with a link, where the CLI promises one line per error."""
    from pydantic import ValidationError

    if not isinstance(e, ValidationError):
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'settings'}: {err['msg'].removeprefix('Value error, ')}"
                     for err in e.errors(include_url=False, include_input=False))


def _unusable(home) -> str | None:
    """Why the home cannot hold state (a file where its folder or a parent should be), before any command
    writes its log there."""
    at = home
    while not at.exists() and at != at.parent:
        at = at.parent
    if not at.is_dir():
        return f"home {home} cannot be a folder: {at} is a file"
    return None


def _quiet(command: Any) -> None:
    """Set up the console as each command starts: after its options are parsed, so that --help and usage
    errors still reach the terminal, and knowing the command's own --json."""
    if hasattr(command, "commands"):  # a group
        for sub in command.commands.values():
            _quiet(sub)
        return
    inner = command.callback
    if inner is None:
        return

    @functools.wraps(inner)
    def run(**params):
        console.setup(state.settings.home, verbose=state.verbose, as_json=bool(params.get("as_json")))
        return inner(**params)

    command.callback = run


def _interrupted(signum, frame) -> None:
    raise KeyboardInterrupt  # a kill or a closed terminal: the command's cleanup runs as for Ctrl-C


def main() -> None:
    import signal

    from aimass.errors import AimassError, BackendError, InvalidInputError, NotFoundError
    from aimass.settings import error_line

    # SIGTERM and SIGHUP would end Python without its finally blocks: a console in the foreground, a deploy
    # starting its cluster or a quickstart would leave what they started running
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", signal.SIGTERM)):
        if signal.getsignal(sig) is not signal.SIG_IGN:  # `nohup aimass ...` asked for hang-ups to be ignored
            signal.signal(sig, _interrupted)
    command = typer.main.get_command(app)
    _quiet(command)
    try:
        # not standalone: a usage error comes here, to be one line like every error (Typer drew a box of them)
        code = command.main(prog_name="aimass", standalone_mode=False)
    except typer.Abort:  # end of input at a prompt
        _fail("aborted", 1, details=False)
    except console.ReaderGone as e:  # `aimass ... | head`: the reader knows it stopped reading
        logging.getLogger("aimass").error(str(e))
        sys.exit(e.exit_code)
    except AimassError as e:
        # bad input says all there is to say in its message; a failing component's story is in the log
        _fail(str(e), e.exit_code, details=not isinstance(e, InvalidInputError | NotFoundError))
    except Exception as e:
        if _usage(e):
            ctx, said = getattr(e, "ctx", None), e.format_message()
            if not said.strip():  # a group called bare: its help is shown already, as with --help
                sys.exit(e.exit_code)
            _fail(said + (f" (see {ctx.command_path} --help)" if ctx else ""), e.exit_code, details=False)
        if console.log_path() is not None:  # before the console's setup no handler exists: not on the terminal
            logging.getLogger("aimass").exception("unexpected error")
        # a store that is away (a tracking server, a catalog database) is a failing component, as BackendError
        # says it: a script tells it from a bug (1) by its code, and may retry it
        _fail(f"{type(e).__name__}: {error_line(e)}", BackendError.exit_code if _unavailable(e) else 1)
    sys.exit(code if isinstance(code, int) else 0)


# an HTTP client's own errors for a server it could not reach (requests', urllib3's: MLflow's clients)
_UNREACHABLE = {"ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout", "NewConnectionError", "MaxRetryError"}


def _unavailable(e: BaseException) -> bool:
    """Whether `e` (or what caused it: MLflow wraps the connection error it retried) says a store could not be
    reached, rather than that aimass used a library wrongly (an IntegrityError, a bad argument: bugs)."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    seen = 0
    while e is not None and seen < 10:  # a cycle of causes ends too
        if isinstance(e, OperationalError | InterfaceError | ConnectionError | TimeoutError) \
                or type(e).__name__ in _UNREACHABLE:
            return True
        # MLflow's message of a request it gave up on, its cause kept only as text
        if type(e).__name__ == "MlflowException" and ("Max retries exceeded" in str(e) or "timed out" in str(e)):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def _usage(e: Exception) -> bool:
    """Whether `e` is the command line's usage error (a missing argument, an option's bad value): Typer's
    click exceptions, which Typer keeps in a private copy of click, known by what they offer."""
    return callable(getattr(e, "format_message", None)) and isinstance(getattr(e, "exit_code", None), int)


def _fail(message: str, code: int, details: bool = True) -> None:
    from aimass.settings import redacted

    where = console.log_path() if details else None
    # one line (a component's message may hold several: the rest is in the log); a library's error may quote a
    # store URL whole, password included (MLflow names the URL it called)
    line = " | ".join(part.strip() for part in message.splitlines() if part.strip()) or message
    console.error(f"error: {redacted(line)}" + (f" (details: {where})" if where else ""))
    sys.exit(code)
