"""The backend contract (tests/test_contract_backends.py's table of scenarios and
answers) on the ``sqlalchemy`` backend over MariaDB; the contract module itself runs it
on SQLite and PostgreSQL."""
import pytest

import test_contract_backends as contract
from test_sqlalchemy_backend import mariadb_url  # noqa: F401 (fixture)


def _cases():
    for scenario, needs_waiting, state, check in contract.TABLE:
        if scenario is contract.s_waiting_at_stop:
            # Its wait() runs the full 30 s deadline on a durable backend (the job stays
            # queued); the same answer is checked at once by
            # test_sqlalchemy_backend.py::test_delayed_jobs_wait_as_rows_and_survive_a_restart.
            continue
        yield pytest.param(scenario, state, check, id=scenario.__name__[2:])


@pytest.mark.parametrize('scenario, state, check', list(_cases()))
def test_contract_on_mariadb(request, tmp_path, mariadb_url, scenario, state, check):  # noqa: F811
    entry = contract.Entry(lambda request: contract._sqlalchemy(request, 'mariadb_url'))
    contract.test_contract(request, tmp_path, entry, scenario, state, check)
