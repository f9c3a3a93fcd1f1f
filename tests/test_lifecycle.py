"""The job state machine: its transition table, method by method and state by state,
and a randomised stateful test of a real queue (hypothesis) over perform, cancel,
failures, retries, delays, stop and fork, checking that every job ends in exactly one
final state, never moves backwards, never runs after being cancelled, and that nothing
is left queued or running once stop() returned and its running jobs ended. A fork's
child reports through a pipe and exits without returning into pytest (``in_fork``)."""
import threading

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (Bundle, RuleBasedStateMachine, invariant, precondition,
                                 rule)

from tgext.asyncjob import JobQueue, QueueStopped, Retry
from tgext.asyncjob.hooks import Hooks
from tgext.asyncjob.job import Job, JobError, JobState
from tgext.asyncjob.lifecycle import ALLOWED, Lifecycle
from tgext.asyncjob.trackers.memory import MemoryProgressTracker

from test_fork import in_fork

Q, R = JobState.QUEUED, JobState.RUNNING
S, F, C = JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED
STATES = (Q, R, S, F, C)
FINAL_EVENTS = ('succeeded', 'failed', 'cancelled')

# ----------------------------------------------------------- the table, spelled out

ERROR = JobError('ValueError', 'x')
METHODS = {
    'claim': lambda lc, job: lc.claim(job),
    'succeed': lambda lc, job: lc.succeed(job, 1),
    'fail': lambda lc, job: lc.fail(job, ERROR),
    'interrupt': lambda lc, job: lc.interrupt(job, 'exit'),
    'retry': lambda lc, job: lc.retry(job, ERROR, 0),
    'cancel': lambda lc, job: lc.cancel(job),
    'drop': lambda lc, job: lc.drop(job, 'stopped'),
}

# method -> {state it is called in: (answer, state after)}; every other state: refused.
EXPECTED = {
    'claim': {Q: (True, R)},
    'succeed': {R: (True, S)},
    'fail': {R: (True, F)},
    'interrupt': {R: (True, F)},
    'retry': {R: (True, Q)},
    'cancel': {Q: (True, C), R: (True, R)},  # running: only flagged
    'drop': {Q: (True, C)},
}


@pytest.mark.parametrize('state', STATES, ids=lambda s: s.value)
@pytest.mark.parametrize('method', list(METHODS))
def test_transition_table(method, state):
    store = MemoryProgressTracker()
    lifecycle = Lifecycle(store, Hooks())
    job = Job(print, (), {})
    job.state = state
    store.track(job.id, {'state': state.value})
    answer, after = EXPECTED[method].get(state, (False, state))
    assert METHODS[method](lifecycle, job) is answer
    assert job.state is after
    assert store.get_record(job.id)['state'] == after.value
    if method == 'cancel' and state is R:
        assert job.cancel_requested
    if answer and after is not state:
        assert after in ALLOWED[state]


def test_finished_states_have_no_successor_and_everything_else_can_finish():
    assert all(not ALLOWED[s] for s in (S, F, C))
    assert ALLOWED[Q] == {R, C} and ALLOWED[R] == {S, F, Q}


def test_claim_and_cancel_race_one_winner_each_time():
    store = MemoryProgressTracker()
    lifecycle = Lifecycle(store, Hooks())
    for _ in range(300):
        job = Job(print, (), {})
        store.track(job.id, {'state': 'queued'})
        results = {}
        barrier = threading.Barrier(2)

        def claim():
            barrier.wait()
            results['claim'] = lifecycle.claim(job)

        threads = [threading.Thread(target=claim)]
        threads[0].start()
        barrier.wait()
        results['cancel_state'] = job.state
        results['cancel'] = lifecycle.cancel(job)
        threads[0].join()
        if results['claim']:
            # Claimed first: cancel only flagged it; it runs and is told.
            assert job.state is R and job.cancel_requested
        else:
            assert job.state is C and results['cancel']
        assert store.get_record(job.id)['state'] == job.state.value


# ------------------------------------------------------- the randomised lifecycle

class Events:
    """A hook recording each job's events in order."""

    def __init__(self):
        self.by_job = {}
        self.lock = threading.Lock()

    def _add(self, job, event):
        with self.lock:
            self.by_job.setdefault(job.id, []).append(event)

    def on_started(self, job):
        self._add(job, 'started')

    def on_retrying(self, job, error, delay):
        self._add(job, 'retrying')

    def on_succeeded(self, job, result):
        self._add(job, 'succeeded')

    def on_failed(self, job, error):
        self._add(job, 'failed')

    def on_cancelled(self, job):
        self._add(job, 'cancelled')


def valid_history(events, finished):
    """started (retrying started)* then one final event; or a prefix of it while live."""
    expect_start = True
    for i, event in enumerate(events):
        if event in FINAL_EVENTS:
            # cancelled only while queued; succeeded and failed only while running
            return i == len(events) - 1 and (event == 'cancelled') == expect_start
        if event == 'started' and not expect_start:
            return False
        if event == 'retrying' and expect_start:
            return False
        expect_start = event == 'retrying'
    return not finished


class Work:
    """What the jobs of one run do; bodies record that they ran."""

    def __init__(self):
        self.ran = []
        self.gates = []
        self.attempts = {}

    def ok(self, key):
        self.ran.append(key)
        return key

    def fail(self, key):
        self.ran.append(key)
        raise ValueError(key)

    def flaky(self, key, failures):
        self.ran.append(key)
        seen = self.attempts[key] = self.attempts.get(key, 0) + 1
        if seen <= failures:
            raise ConnectionError(key)
        return key

    def held(self, key, gate):
        self.ran.append(key)
        if not gate.wait(30):
            raise AssertionError('gate never opened')
        return key


class LifecycleMachine(RuleBasedStateMachine):
    jobs = Bundle('jobs')

    def __init__(self):
        super().__init__()
        self.events = Events()
        self.work = Work()
        self.q = JobQueue(workers=2, hooks=[self.events])
        self.q.backend.start()
        self.keys = {}            # job id -> key its body records
        self.cancelled_queued = set()  # ids cancel() finished while queued
        self.count = 0

    def _perform(self, func, args, **options):
        self.count += 1
        key = f'k{self.count}'
        try:
            jobid = self.q.perform(func, (key,) + args, **options)
        except QueueStopped:
            assert self.q.stopped
            return None
        self.keys[jobid] = key
        return jobid

    @rule(target=jobs, kind=st.sampled_from(['ok', 'fail', 'delayed']))
    def perform(self, kind):
        if kind == 'delayed':
            return self._perform(self.work.ok, (), delay=0.02)
        return self._perform(getattr(self.work, kind), ())

    @rule(target=jobs, failures=st.integers(0, 3), max_retries=st.integers(0, 2))
    def perform_flaky(self, failures, max_retries):
        return self._perform(self.work.flaky, (failures,),
                             retry=Retry(on=ConnectionError, max_retries=max_retries,
                                         backoff=0, jitter=False))

    @rule(target=jobs)
    def perform_held(self):
        gate = threading.Event()
        self.work.gates.append(gate)
        return self._perform(self.work.held, (gate,))

    @rule()
    def open_a_gate(self):
        for gate in self.work.gates:
            if not gate.is_set():
                gate.set()
                return

    @rule(jobid=jobs)
    def cancel(self, jobid):
        if jobid is None:
            return
        before = self.q.get_status(jobid).state
        done = self.q.cancel(jobid)
        after = self.q.get_status(jobid).state
        if done and after is C:
            self.cancelled_queued.add(jobid)
        if before.finished:
            assert not done and after is before

    @precondition(lambda self: not self.q.stopped)
    @rule(timeout=st.sampled_from([0, 0.05]))
    def stop(self, timeout):
        unrun = self.q.stop(timeout)
        for jobid in unrun:
            assert self.q.get_status(jobid).state is C
            self.cancelled_queued.add(jobid)

    @precondition(lambda self: not self.q.stopped)
    @rule()
    def fork(self):
        live = [jobid for jobid in self.keys if not self.q.get_status(jobid).finished]

        def child():
            ran_before = len(self.work.ran)  # no parent thread runs here to add to it
            # The parent's jobs are the parent's: not run here, not shown as live here.
            states = {self.q.get_status(jobid).state.value for jobid in live}
            self.count += 1
            own = self.q.perform(self.work.ok, (f'child{self.count}',))
            own_state = self.q.wait(own, 10).state.value
            unrun = self.q.stop(5)
            left = [j.id for j in self.q.lifecycle.held() if not j.state.finished]
            return {'states': sorted(states), 'own': own_state, 'unrun': unrun,
                    'left': left, 'ran': self.work.ran[ran_before:]}

        _, seen = in_fork(child)
        assert not set(seen['states']) & {'queued', 'running'}, seen
        assert seen['own'] == 'succeeded' and seen['unrun'] == [] and seen['left'] == []
        assert all(key.startswith('child') for key in seen['ran']), seen

    @invariant()
    def histories_are_valid(self):
        with self.events.lock:
            histories = {k: list(v) for k, v in self.events.by_job.items()}
        for jobid, events in histories.items():
            assert valid_history(events, finished=False), (jobid, events)

    @invariant()
    def cancelled_jobs_never_run(self):
        for jobid in self.cancelled_queued:
            assert self.keys[jobid] not in self.work.ran or self._ran_before_cancel(jobid)

    def _ran_before_cancel(self, jobid):
        # A job cancelled between retries ran its earlier attempts, never after.
        events = self.events.by_job.get(jobid, [])
        return 'retrying' in events and events[-1] == 'cancelled'

    def teardown(self):
        for gate in self.work.gates:
            gate.set()
        self.q.stop(10)
        # stop() returned; wait for the jobs still running to end.
        for job in list(self.q.lifecycle.held()):
            if job.state is R:
                self.q.wait(job.id, 30)
        assert [j for j in self.q.lifecycle.held() if not j.state.finished] == []
        for jobid in self.keys:
            status = self.q.get_status(jobid)
            assert status.state in (S, F, C), status
            events = self.events.by_job.get(jobid, [])
            assert valid_history(events, finished=True), (jobid, events)
            assert events[-1] == status.state.value
            runs = self.work.ran.count(self.keys[jobid])
            assert runs == events.count('started'), (jobid, events, runs)


LifecycleMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
# Forking a process whose worker threads run is the case under test (Python 3.12+ warns
# about it in general).
test_randomised_lifecycle = pytest.mark.filterwarnings(
    'ignore:This process .* is multi-threaded:DeprecationWarning')(LifecycleMachine.TestCase)
