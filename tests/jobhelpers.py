"""Small helpers shared by the job tests: gates that hold a job at a known point."""
import threading

from services import wait_for

GATE_TIMEOUT = 30


class Gate:
    """Lets a test hold a job inside its body and release it when it has looked."""

    def __init__(self):
        self.entered = threading.Event()
        self.released = threading.Event()

    def job(self, *args, **kwargs):
        """A job body that signals entry and waits for release (with a deadline)."""
        self.entered.set()
        if not self.released.wait(GATE_TIMEOUT):
            raise AssertionError('gate never released')
        return 'released'

    def wait_entered(self):
        wait_for(self.entered.is_set, timeout=GATE_TIMEOUT, message='job never started')

    def release(self):
        self.released.set()


def wait_finished(queue, jobid, timeout=30):
    """Wait until ``jobid`` is finished and return its status."""
    status = queue.wait(jobid, timeout)
    assert status.finished, f'job {jobid} not finished after {timeout}s: {status}'
    return status
