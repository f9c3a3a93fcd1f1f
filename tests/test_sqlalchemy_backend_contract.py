"""The backend contract (tests/test_contract_backends.py's table of scenarios and
answers) run on the ``sqlalchemy`` backend, on each database."""
import pytest

import test_contract_backends as contract
from test_sqlalchemy_backend import mariadb_url, url  # noqa: F401 (fixtures)

from tgext.asyncjob import JobQueue


def _cases():
    for scenario, needs_waiting, state, check in contract.TABLE:
        if scenario is contract.s_waiting_at_stop:
            # Its wait() runs the full 30 s deadline on a durable backend (the job stays
            # queued); the same answer is checked at once by
            # test_sqlalchemy_backend.py::test_delayed_jobs_wait_as_rows_and_survive_a_restart.
            continue
        yield pytest.param(scenario, state, check, id=scenario.__name__[2:])


@pytest.mark.parametrize('scenario, state, check', list(_cases()))
def test_contract(request, tmp_path, url, scenario, state, check):  # noqa: F811

    def make(request):
        q = JobQueue(backend='sqlalchemy', backend_options={'url': url}, workers=2)
        q.backend.start()
        request.addfinalizer(lambda: (q.stop(10), q.backend.engines.dispose()))
        return q
    contract.test_contract(request, tmp_path, contract.Entry(make), scenario, state, check)
