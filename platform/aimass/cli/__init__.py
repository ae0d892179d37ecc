"""The `aimass` command line. Settings are parsed here, once, and passed down; heavy modules are imported
inside commands so that `aimass --help` stays fast."""
from __future__ import annotations

import sys

import typer

from aimass.cli._common import state
from aimass.cli.datasets import app as datasets_app
from aimass.cli.deploy import app as deployments_app
from aimass.cli.deploy import deploy
from aimass.cli.doctor import doctor
from aimass.cli.keys import app as keys_app
from aimass.cli.models import app as models_app
from aimass.cli.quickstart import quickstart
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


@app.callback()
def _root(home: str = typer.Option(None, "--home", help="State folder (default $AIMASS_HOME or .aimass)")):
    from aimass.settings import Settings

    try:
        state.settings = Settings(home=home) if home else Settings()
    except Exception as e:  # a bad AIMASS_* variable is the user's input too
        typer.echo(f"error: invalid settings: {e}", err=True)
        raise typer.Exit(2) from None


def main() -> None:
    from aimass.errors import AimassError

    try:
        app()
    except AimassError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
