"""The typed errors of the SDK. The CLI prints their message as one line and exits non-zero; HTTP layers map
them to 4xx. Each says what is wrong in words a user can act on."""


class AimassError(Exception):
    """Base class of every error aimass raises on purpose."""

    exit_code = 1


class InvalidInputError(AimassError, ValueError):
    """The caller gave something malformed: a bad name, path, format, parameter or file content."""

    exit_code = 2


class NoGPUError(InvalidInputError):
    """GPU workers asked for that this machine, or the Ray cluster, does not have."""


class NotFoundError(AimassError, LookupError):
    """A named thing (dataset, version, run, model) does not exist."""

    exit_code = 3


class ConflictError(AimassError):
    """The request contradicts stored state (an incompatible schema, a concurrent change)."""

    exit_code = 4


class BackendError(AimassError):
    """A component (git, DVC, the catalog) failed; stored state was rolled back."""

    exit_code = 5
