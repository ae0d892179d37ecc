"""Training runs through the SDK (aimass.runs): a run that is not there is not found; a store that fails says so;
a listing's size is checked at the boundary."""
import pytest

from aimass import runs
from aimass.errors import BackendError, InvalidInputError, NotFoundError


def test_a_missing_run_is_not_found_and_a_failing_store_is_a_backend_error(settings, monkeypatch):
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INTERNAL_ERROR

    with pytest.raises(NotFoundError, match="no training run 'f00d'"):
        runs.show("f00d", settings=settings)

    def locked(run_id):
        raise MlflowException("database is locked", error_code=INTERNAL_ERROR)

    monkeypatch.setattr(mlflow, "get_run", locked)
    with pytest.raises(BackendError, match="database is locked"):  # the run may well exist
        runs.show("f00d", settings=settings)


@pytest.mark.parametrize("n", [0, -1, True, 2.5])
def test_a_listing_size_out_of_range_is_refused(settings, n):
    with pytest.raises(InvalidInputError, match="max_results"):
        runs.list_runs(max_results=n, settings=settings)

