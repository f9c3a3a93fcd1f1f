"""The web layer (tgext.asyncjob.web) through WebTest: the JSON status endpoint, the
progress page, the job list and its access rule, static files, mounting, and the demo."""

import json
import logging
import math
import threading

import pytest
import webtest
from markupsafe import Markup

from services import wait_for
from sampleapp.controllers.root import RootController

from tgext.asyncjob import JobState, JobStatus, asyncjob_set_progress
from tgext.asyncjob.trackers.redisdb import RedisProgressTracker
from tgext.asyncjob.web import (HIDDEN_ERROR, AsyncJobController, mount, mount_from_config,
                                percent_of, progress_snippet)

JOB_TIMEOUT = 10


class WebRoot(RootController):
    """The sample app with the job pages mounted by hand."""

    asyncjob = AsyncJobController()


@pytest.fixture
def web_app(make_app, sqlite_db_url):
    """``web_app(**extra_config)``: a plugged sample app with /asyncjob mounted by hand."""

    def build(plug_options=None, **extra_config):
        return make_app(sqlite_db_url, root=WebRoot, plug_options=plug_options,
                        extra_config=extra_config)

    return build


@pytest.fixture
def gate():
    """An event jobs wait on; always opened at teardown so queues can stop."""
    event = threading.Event()
    yield event
    event.set()


def queue_of(app):
    return app.app_globals.asyncjob_queue


def finished(app, jobid):
    status = queue_of(app).wait(jobid, JOB_TIMEOUT)
    assert status.finished, status
    return status


def status_json(app, jobid, status=200):
    return strict_json(app.get("/asyncjob/status/%s.json" % jobid, status=status).text)


def strict_json(text):
    """``json.loads`` that refuses what RFC 8259 does not allow (NaN, Infinity)."""
    def refuse(constant):
        raise ValueError("non-standard JSON constant %s" % constant)
    return json.loads(text, parse_constant=refuse)


def boom():
    raise ValueError("it went wrong <on purpose>")


# ------------------------------------------------------------ JSON, each state

def test_status_queued_running_succeeded(web_app, gate):
    app = web_app()
    started = threading.Event()

    def blocker():
        from tgext.asyncjob import asyncjob_set_progress
        asyncjob_set_progress(42, {"message": "halfway-ish"})
        started.set()
        gate.wait(JOB_TIMEOUT)
        return {"answer": 42}

    running_id = queue_of(app).perform(blocker)
    queued_id = queue_of(app).perform(lambda: "second")
    assert started.wait(JOB_TIMEOUT)

    running = status_json(app, running_id)
    assert running["state"] == "running"
    assert running["progress"] == 42 and running["percent"] == 42
    assert running["data"] == {"message": "halfway-ish"}
    assert running["finished"] is False

    queued = status_json(app, queued_id)
    assert queued["state"] == "queued" and queued["percent"] == 0

    gate.set()
    finished(app, running_id)
    done = status_json(app, running_id)
    assert done["state"] == "succeeded"
    assert done["result"] == {"answer": 42}
    assert done["percent"] == 100 and done["finished"] is True
    assert status_json(app, queued_id)["state"] == "succeeded"


def test_status_json_headers(web_app):
    app = web_app()
    jobid = queue_of(app).perform(lambda: None)
    finished(app, jobid)
    response = app.get("/asyncjob/status/%s.json" % jobid)
    assert response.content_type == "application/json"
    assert response.headers["Cache-Control"] == "no-store"


def test_status_not_found_is_404_with_json(web_app):
    app = web_app()
    body = status_json(app, "0" * 32, status=404)
    assert body["state"] == "not_found"
    assert body["id"] == "0" * 32


def test_status_failed_hides_message_and_traceback_by_default(web_app):
    app = web_app()
    jobid = queue_of(app).perform(boom)
    finished(app, jobid)
    response = app.get("/asyncjob/status/%s.json" % jobid)
    body = strict_json(response.text)
    assert body["state"] == "failed"
    assert body["error"] == {"type": "ValueError", "message": HIDDEN_ERROR, "public": False}
    assert "went wrong" not in response.text


def test_status_failed_shows_message_and_traceback_in_debug(web_app):
    app = web_app(debug=True)
    jobid = queue_of(app).perform(boom)
    finished(app, jobid)
    error = status_json(app, jobid)["error"]
    assert error["message"] == "it went wrong <on purpose>"
    assert "Traceback (most recent call last)" in error["traceback"]
    assert "ValueError: it went wrong" in error["traceback"]


@pytest.mark.parametrize("rule, debug, shown", [
    (lambda: True, False, True),      # a predicate opens it without debug
    (lambda: False, True, False),     # ... and closes it even in debug
    ("true", False, True),            # .ini strings
    (False, True, False),
    (lambda: 1 / 0, True, False),     # a failing predicate denies
])
def test_traceback_rule(web_app, rule, debug, shown):
    app = web_app(debug=debug, **{"asyncjob.show_tracebacks": rule})
    jobid = queue_of(app).perform(boom)
    finished(app, jobid)
    error = status_json(app, jobid)["error"]
    assert ("traceback" in error) is shown
    assert (error["message"] == "it went wrong <on purpose>") is shown


def occupy_worker(app, gate):
    """Queue a job that holds the (only) worker until ``gate`` opens; return its id
    once it runs, so that the next job stays queued."""
    started = threading.Event()

    def blocker():
        started.set()
        gate.wait(JOB_TIMEOUT)

    jobid = queue_of(app).perform(blocker)
    assert started.wait(JOB_TIMEOUT)
    return jobid


def test_status_cancelled(web_app, gate):
    app = web_app()
    first = occupy_worker(app, gate)
    victim = queue_of(app).perform(lambda: "never")
    assert queue_of(app).cancel(victim)
    body = status_json(app, victim)
    assert body["state"] == "cancelled"
    assert body["finished"] is True
    gate.set()
    finished(app, first)


class LegacyTracker(object):
    """A 0.3-style tracker: the four methods, and nothing kept once a job ends."""

    def __init__(self):
        self.entries = {}

    def track(self, entryid):
        self.entries[entryid] = (-1, None)

    def remove(self, entryid):
        self.entries.pop(entryid, None)

    def set_progress(self, entryid, value, message):
        self.entries[entryid] = (value, message)

    def get_progress(self, entryid):
        return self.entries.get(entryid)


def test_status_unknown_with_a_legacy_tracker(web_app):
    app = web_app(plug_options={"progress_tracker": LegacyTracker()})
    jobid = queue_of(app).perform(lambda: None)
    wait_for(lambda: not queue_of(app).tracker.entries, JOB_TIMEOUT,
             message="the legacy tracker still tracks the job")
    body = status_json(app, jobid)
    assert body["state"] == "unknown"
    assert body["percent"] is None


def test_tracker_outage_is_503(web_app, redis_server):
    tracker = RedisProgressTracker(url=redis_server.url, socket_timeout=2)
    app = web_app(debug=True, plug_options={"progress_tracker": tracker})
    jobid = queue_of(app).perform(lambda: None)
    finished(app, jobid)
    assert status_json(app, jobid)["state"] == "succeeded"
    redis_server.stop()
    response = app.get("/asyncjob/status/%s.json" % jobid, status=503)
    assert response.json["state"] == "unknown"
    assert response.headers["Retry-After"]
    app.get("/asyncjob/progress/%s" % jobid, status=503)
    app.get("/asyncjob/jobs", status=503)


# ------------------------------------------------------------ progress page

def test_progress_page(web_app):
    app = web_app(**{"asyncjob.show_tracebacks": True})
    jobid = queue_of(app).perform(boom)
    finished(app, jobid)
    page = app.get("/asyncjob/progress/%s" % jobid)
    assert page.content_type == "text/html"
    widget = page.html.select_one("[data-asyncjob-status]")
    assert widget["data-asyncjob-status"] == "/asyncjob/status/%s.json" % jobid
    assert widget["data-state"] == "failed"
    assert page.html.select_one('script[src="/asyncjob/static/asyncjob.js"]') is not None
    assert page.html.select_one('link[href="/asyncjob/static/asyncjob.css"]') is not None
    bar = page.html.select_one('[role="progressbar"]')
    assert bar["aria-valuemin"] == "0" and bar["aria-valuemax"] == "100"
    # Server-rendered final state, escaped.
    assert page.html.select_one(".asyncjob-state").text == "Failed"
    assert page.html.select_one(".asyncjob-error").text == \
        "ValueError: it went wrong <on purpose>"
    assert "<on purpose>" not in page.text
    assert "in boom" in page.html.select_one(".asyncjob-traceback pre").text


def test_progress_page_hides_the_message_by_default(web_app):
    app = web_app()
    jobid = queue_of(app).perform(boom)
    finished(app, jobid)
    page = app.get("/asyncjob/progress/%s" % jobid)
    assert page.html.select_one(".asyncjob-error").text == "ValueError: " + HIDDEN_ERROR
    assert page.html.select_one(".asyncjob-traceback").has_attr("hidden")
    assert "went wrong" not in page.text


def test_progress_page_of_unknown_job_is_404(web_app):
    app = web_app()
    page = app.get("/asyncjob/progress/%s" % ("0" * 32), status=404)
    assert page.html.select_one("[data-asyncjob-status]")["data-state"] == "not_found"


@pytest.mark.parametrize("bad", [
    "nosuchjob", "%3Cscript%3Ealert(1)%3C%2Fscript%3E", "0" * 31, "0" * 33, "A" * 32,
    "%s%%2F..%%2F..%%2Fevil%%2Fprogress%%2F%s" % ("0" * 32, "1" * 32),
    "..%2F..%2Fevil%2Fprogress%2F" + "1" * 32,
])
def test_anything_but_a_job_id_is_404_before_rendering(web_app, bad):
    """An id holding %2F..%2F made the page's script URL follow the request path to
    another same-origin script; nothing that is not a job id gets a page now."""
    app = web_app()
    page = app.get("/asyncjob/progress/" + bad, status=404)
    assert page.content_type == "text/plain"
    assert "<" not in page.text and "evil" not in page.text
    answer = app.get("/asyncjob/status/%s.json" % bad, status=404)
    assert strict_json(answer.text) == {"id": None, "state": "not_found", "detail": ""}


class NestedRoot(RootController):
    """The job pages two levels down, where no request path of theirs says so."""

    class admin(object):
        jobs = AsyncJobController()

    admin = admin()


def test_asset_urls_come_from_the_mount_point(make_app, sqlite_db_url):
    app = make_app(sqlite_db_url, root=NestedRoot)
    jobid = queue_of(app).perform(lambda: None)
    finished(app, jobid)
    for environ in ({}, {"SCRIPT_NAME": "/prefix"}):
        base = environ.get("SCRIPT_NAME", "") + "/admin/jobs"
        page = app.get("/admin/jobs/progress/%s" % jobid, extra_environ=environ)
        assert page.html.select_one("script")["src"] == base + "/static/asyncjob.js"
        assert page.html.select_one("link")["href"] == base + "/static/asyncjob.css"
        assert page.html.select_one("[data-asyncjob-status]")["data-asyncjob-status"] == \
            "%s/status/%s.json" % (base, jobid)
    app.get("/admin/jobs/status/%s.json" % jobid)
    app.get("/admin/jobs/static/asyncjob.js")


# ------------------------------------------------------------ any data, standard JSON

class Unrepresentable(object):
    def __repr__(self):
        raise RuntimeError("no repr for you")


def circular():
    data = {"name": "loop"}
    data["self"] = data
    return data


@pytest.mark.parametrize("result", [
    float("nan"), float("inf"), {"ratio": float("-inf")}, {(1, 2): "tuple key"},
    circular(), [threading.Lock()], Unrepresentable(), "lone \ud800 surrogate",
], ids=["nan", "inf", "-inf", "tuple-key", "circular", "lock", "bad-repr", "surrogate"])
def test_status_json_is_standard_json_whatever_the_result(web_app, result):
    app = web_app(debug=True)
    jobid = queue_of(app).perform(lambda: result)
    assert finished(app, jobid).state is JobState.SUCCEEDED
    body = status_json(app, jobid)
    assert body["state"] == "succeeded" and body["percent"] == 100
    app.get("/asyncjob/progress/%s" % jobid)
    listing = strict_json(app.get("/asyncjob/jobs.json").text)
    assert listing["jobs"][0]["id"] == jobid
    assert app.get("/asyncjob/jobs").html.select_one("tbody tr")["data-state"] == "succeeded"


def deeply_nested(depth=100000):
    outer = inner = []
    for _ in range(depth):
        inner.append([])
        inner = inner[0]
    return outer


class BrokenDict(dict):
    def items(self):
        raise RuntimeError("no items")

    def keys(self):
        raise RuntimeError("no keys")


class LongRepr(object):
    def __repr__(self):
        return "x" * 1000000


@pytest.mark.parametrize("value, check", [
    (deeply_nested(), lambda out: "<too deep>" in json.dumps(out)),
    ({"n": float("nan"), "deep": deeply_nested()}, lambda out: out["n"] == "nan"),
    (BrokenDict(a=1), lambda out: isinstance(out, (str, dict))),
    (LongRepr(), lambda out: 2000 <= len(out) < 2010),
    ({"k": Unrepresentable()}, lambda out: out == {"k": "<unrepresentable "
                                                   "Unrepresentable object>"}),
], ids=["deep", "deep+nan", "broken-dict", "long-repr", "bad-repr"])
def test_jsonsafe_encodes_anything(value, check):
    from tgext.asyncjob import jsonsafe
    assert check(strict_json(jsonsafe.dumps(value)))


@pytest.mark.parametrize("tracker", ["memory", "redis"])
@pytest.mark.parametrize("data", [
    {"done": float("inf"), "total": 1}, {"done": 1, "total": float("nan")},
    {"done": 1e308, "total": 1e-308}, {"done": float("nan"), "total": 2, "message": "odd"},
])
def test_status_json_of_odd_progress_data(web_app, gate, request, tracker, data):
    plug_options = {}
    if tracker == "redis":
        request.getfixturevalue("redis_client")
        plug_options["progress_tracker"] = RedisProgressTracker(
            url=request.getfixturevalue("redis_url"))
    app = web_app(plug_options=plug_options)
    reported = threading.Event()

    def job():
        asyncjob_set_progress(40, data)
        reported.set()
        gate.wait(JOB_TIMEOUT)

    jobid = queue_of(app).perform(job)
    assert reported.wait(JOB_TIMEOUT)
    wait_for(lambda: status_json(app, jobid)["state"] == "running", JOB_TIMEOUT)
    body = status_json(app, jobid)
    assert body["percent"] == 40  # no usable done/total: the progress value
    assert set(body["data"]) == set(data)
    assert all(isinstance(v, str) or math.isfinite(v) for v in body["data"].values())
    page = app.get("/asyncjob/progress/%s" % jobid)
    assert page.html.select_one(".asyncjob-percent").text == "40%"
    gate.set()
    finished(app, jobid)


# ------------------------------------------------------------ error messages

def test_an_integrity_error_shows_neither_sql_nor_parameters(make_app, postgres_db_url,
                                                             caplog):
    """A SQLAlchemy IntegrityError's message holds the SQL and its bound parameters:
    the pages show neither, the log has it all."""
    from sampleapp import model
    from sampleapp.controllers.root import db_session

    app = make_app(postgres_db_url, root=WebRoot,
                   extra_config={"asyncjob.jobs_access": True})

    def duplicate():
        db_session().add(model.Group(group_name="s3cr3t-token", display_name="hunter2"))
        db_session().add(model.Group(group_name="s3cr3t-token", display_name="hunter2"))
        db_session().flush()

    with caplog.at_level(logging.ERROR, logger="tgext.asyncjob"):
        jobid = queue_of(app).perform(duplicate)
        status = finished(app, jobid)
    assert "s3cr3t-token" in caplog.text and "Traceback" in caplog.text
    assert status.error.type == "IntegrityError"
    assert "s3cr3t-token" in status.error.message and "INSERT" in status.error.message
    for url in ("/asyncjob/status/%s.json" % jobid, "/asyncjob/progress/%s" % jobid,
                "/asyncjob/jobs", "/asyncjob/jobs.json"):
        text = app.get(url).text
        assert "IntegrityError" in text, url
        for secret in ("s3cr3t-token", "hunter2", "INSERT", "tg_group", "duplicate key"):
            assert secret not in text, (url, secret)
    assert status_json(app, jobid)["error"]["message"] == HIDDEN_ERROR


def cannot_import():
    from tgext.asyncjob.errors import JobFailed
    raise JobFailed("The file is larger than 10 MB <sorry>.")


@pytest.mark.parametrize("debug", [False, True])
def test_a_job_failed_message_is_shown_to_anyone(web_app, debug):
    """``JobFailed(message)``: a message meant for the user, shown where others are not."""
    app = web_app(debug=debug, **{"asyncjob.jobs_access": True})
    jobid = queue_of(app).perform(cannot_import)
    assert finished(app, jobid).error.public is True
    error = status_json(app, jobid)["error"]
    assert (error["type"], error["message"], error["public"]) == (
        "JobFailed", "The file is larger than 10 MB <sorry>.", True)
    assert ("traceback" in error) is debug
    page = app.get("/asyncjob/progress/%s" % jobid)
    assert page.html.select_one(".asyncjob-error").text == \
        "The file is larger than 10 MB <sorry>."
    assert "The file is larger than 10 MB <sorry>." in \
        app.get("/asyncjob/jobs").html.select_one("tbody tr").text


# ------------------------------------------------------------ wording and the way back

def test_queued_reads_queued_in_the_snippet_and_the_page(web_app, gate):
    app = web_app()
    first = occupy_worker(app, gate)
    queued = queue_of(app).perform(lambda: None)
    page = app.get("/asyncjob/progress/%s" % queued).html
    snippet = webtest.TestResponse(progress_snippet(queued), content_type="text/html").html
    for html in (page, snippet):
        line = html.select_one(".asyncjob-line")
        assert line.select_one(".asyncjob-percent").text == ""
        assert line.text.strip() == "Queued"
        assert not html.select_one("[role=progressbar]").has_attr("aria-valuenow")
    gate.set()
    finished(app, first)


def back_link(app, jobid, **headers):
    page = app.get("/asyncjob/progress/%s" % jobid, headers=headers)
    link = page.html.select_one("a.asyncjob-back")
    return link["href"], link.text


def test_progress_page_links_back_to_the_application(web_app):
    app = web_app()
    jobid = queue_of(app).perform(lambda: None)
    finished(app, jobid)
    assert back_link(app, jobid) == ("/", "Back to the application")
    assert back_link(app, jobid, Referer="http://localhost/reports?year=2024#top") == \
        ("http://localhost/reports?year=2024", "Back")
    for foreign in ("http://evil.example/", "https://localhost/x", "javascript:alert(1)",
                    "http://localhost/asyncjob/progress/%s" % jobid):
        assert back_link(app, jobid, Referer=foreign) == ("/", "Back to the application")
    page = app.get("/asyncjob/progress/%s" % jobid, extra_environ={"SCRIPT_NAME": "/app"})
    assert page.html.select_one("a.asyncjob-back")["href"] == "/app/"


def test_back_url_setting(web_app):
    app = web_app(**{"asyncjob.back_url": "/dashboard"})
    jobid = queue_of(app).perform(lambda: None)
    finished(app, jobid)
    assert back_link(app, jobid, Referer="http://localhost/reports") == \
        ("/dashboard", "Back to the application")
    page = app.get("/asyncjob/progress/%s" % jobid, extra_environ={"SCRIPT_NAME": "/app"})
    assert page.html.select_one("a.asyncjob-back")["href"] == "/app/dashboard"


def test_progress_snippet():
    html = progress_snippet("abc123", mount="/jobs/")
    assert isinstance(html, Markup)
    assert 'data-asyncjob-status="/jobs/status/abc123.json"' in html
    assert 'src="/jobs/static/asyncjob.js"' in html
    bare = progress_snippet('"><b>x', include_assets=False)
    assert "<script" not in bare and "<b>" not in bare


def test_percent_of():
    def st(state, progress=None, data=None):
        return JobStatus(id="x", state=JobState(state), progress=progress, data=data)

    assert percent_of(st("running", 250)) == 100
    assert percent_of(st("running", -5)) == 0
    assert percent_of(st("running", 7, {"done": 3, "total": 4})) == 75
    assert percent_of(st("running", 7, {"done": 3, "total": 0})) == 7
    assert percent_of(st("queued")) == 0
    assert percent_of(st("succeeded", 10)) == 100
    assert percent_of(st("unknown")) is None


# ------------------------------------------------------------ static files

def test_static_files(web_app):
    app = web_app()
    js = app.get("/asyncjob/static/asyncjob.js")
    assert js.content_type == "text/javascript"
    assert "data-asyncjob-status" in js.text
    css = app.get("/asyncjob/static/asyncjob.css")
    assert css.content_type == "text/css"
    assert app.get("/asyncjob/static/asyncjob.js",
                   headers={"If-None-Match": js.headers["ETag"]}, status=304)
    app.get("/asyncjob/static/web.py", status=404)
    app.get("/asyncjob/static/..%2Fweb.py", status=404)
    app.get("/asyncjob/static/asyncjob.js/extra", status=404)


# ------------------------------------------------------------ job list

def test_jobs_page_denied_by_default(web_app):
    app = web_app()
    page = app.get("/asyncjob/jobs", status=403)
    assert "asyncjob.jobs_access" in page.text
    app.get("/asyncjob/jobs.json", status=403)


def test_jobs_page_in_debug_with_memory_tracker(web_app):
    app = web_app(debug=True)
    ok = queue_of(app).perform(lambda: 1)
    bad = queue_of(app).perform(boom)
    finished(app, ok)
    finished(app, bad)
    page = app.get("/asyncjob/jobs")
    rows = page.html.select("table.asyncjob-jobs tbody tr")
    assert [row["data-state"] for row in rows] == ["failed", "succeeded"]
    assert rows[0].select_one("a")["href"] == "/asyncjob/job/%s" % bad
    assert "it went wrong" in rows[0].text
    listing = app.get("/asyncjob/jobs.json", params={"limit": "1"}).json
    assert [job["id"] for job in listing["jobs"]] == [bad]
    assert "traceback" not in listing["jobs"][0]["error"]


def test_jobs_page_with_redis_tracker(web_app, redis_url, redis_client):
    tracker = RedisProgressTracker(url=redis_url)
    app = web_app(debug=True, plug_options={"progress_tracker": tracker})
    ids = [queue_of(app).perform(lambda: "ok") for _ in range(3)]
    for jobid in ids:
        finished(app, jobid)
    listing = app.get("/asyncjob/jobs.json").json["jobs"]
    assert {job["id"] for job in listing} == set(ids)
    assert {job["state"] for job in listing} == {"succeeded"}
    page = app.get("/asyncjob/jobs")
    assert len(page.html.select("table.asyncjob-jobs tbody tr")) == 3


def test_jobs_access_predicate(web_app):
    allowed = {"value": False}
    app = web_app(**{"asyncjob.jobs_access": lambda: allowed["value"]})
    app.get("/asyncjob/jobs", status=403)
    allowed["value"] = True
    assert "No jobs yet" in app.get("/asyncjob/jobs").text


@pytest.mark.parametrize("enable", ["plug", "after"])
@pytest.mark.parametrize("key", ["asyncjob.jobs_access", "asyncjob.show_tracebacks"])
def test_an_invalid_access_rule_fails_at_start(web_app, make_app, sqlite_db_url, key, enable):
    """Not a 500 on every request that reads it."""
    with pytest.raises(ValueError, match=r"%s: .*true/false: 'yes please'"
                       % key.replace(".", r"\.")):
        if enable == "plug":
            web_app(**{key: "yes please"})
        else:  # mounted by hand, started by start_async_worker() after the build
            make_app(sqlite_db_url, enable="after", root=WebRoot, extra_config={key: "yes please"})


def test_an_invalid_access_rule_set_after_start_denies(web_app, caplog):
    """A value no start-up check saw (put in the configuration later): deny, say why."""
    app = web_app(debug=True)
    app.config["asyncjob.jobs_access"] = "yes please"
    with caplog.at_level(logging.ERROR, logger="tgext.asyncjob"):
        app.get("/asyncjob/jobs", status=403)
    assert "asyncjob.jobs_access: String is not true/false: 'yes please'" in caplog.text


def test_jobs_page_without_listing_is_501(web_app):
    app = web_app(debug=True, plug_options={"progress_tracker": LegacyTracker()})
    app.get("/asyncjob/jobs", status=501)


# ------------------------------------------------------------ mounting

def test_mount_from_config_on_a_plugged_app(_apps, sqlite_db_url):
    """What tgwiring's component does when plugged: mount at environment load."""
    from tg.configurator.base import (ConfigurationComponent,
                                      EnvironmentLoadedConfigurationAction)
    from tgext.pluggable import plug
    from sampleapp.config import SampleTestApp, create_tables, make_base_config
    import tg

    class MountComponent(ConfigurationComponent):
        id = "asyncjob-web-test"

        def get_actions(self):
            return (EnvironmentLoadedConfigurationAction(
                lambda conf, app: mount_from_config(conf)),)

    _apps.built = True
    base_config = make_base_config(sqlite_db_url)
    plug(base_config, "tgext.asyncjob")
    base_config.register(MountComponent)
    create_tables(sqlite_db_url)
    wsgi = base_config.make_wsgi_app()
    app = SampleTestApp(wsgi, conf=tg.config._current_obj(), configurator=base_config,
                        enable="plug")
    _apps.add(app)
    root = app.config["tg.root_controller"]
    assert isinstance(root.asyncjob, AsyncJobController)
    assert "asyncjob" not in vars(RootController)  # the instance, not the shared class
    jobid = queue_of(app).perform(lambda: None)
    finished(app, jobid)
    assert status_json(app, jobid)["state"] == "succeeded"


def test_mount_rules():
    class Root(object):
        pass

    controller = mount(Root)
    assert Root.asyncjob is controller
    assert mount(Root) is controller          # idempotent
    assert mount(WebRoot()) is WebRoot.asyncjob  # mounted by hand: left alone
    taken = Root.taken = object()
    assert mount(Root, "taken") is taken  # the app's own attribute: left alone (logged)
    assert mount_from_config({"asyncjob.mount": "false"}) is None


# ------------------------------------------------------------ demo app

@pytest.fixture
def demo(_apps, sqlite_db_url):
    from tgext.asyncjob.demo import build_demo
    _apps.built = True
    built = build_demo(sqlite_db_url)
    _apps.add(built)
    yield built
    forget_config(built.conf)


def forget_config(conf):
    # Building made the demo's config the process config; later tests that look up
    # "the current application" must not find this one (its queue will be stopped).
    import tg
    tg.config.pop_process_config(conf)


def test_demo_app_runs_jobs(demo):
    app = webtest.TestApp(demo.wsgi_app)
    index = app.get("/")
    assert index.html.select_one("form[action='/start']") is not None
    assert index.html.select_one("a[href='/asyncjob/jobs']") is not None
    app.get("/start", status=405)
    app.post("/start", {"rows": "0", "delay": "0"}, status=400)

    started = app.post("/start", {"rows": "5", "delay": "0"}, status=303)
    jobid = started.location.rsplit("/", 1)[1]
    assert started.location.endswith("/asyncjob/progress/%s" % jobid)
    status = demo.app_globals.asyncjob_queue.wait(jobid, JOB_TIMEOUT)
    assert status.state is JobState.SUCCEEDED and status.result == {"rows": 5}
    assert status_json(app, jobid)["percent"] == 100
    assert "5 row(s) in the table" in app.get("/").text

    failed = app.post("/fail", status=303)
    bad = failed.location.rsplit("/", 1)[1]
    status = demo.app_globals.asyncjob_queue.wait(bad, JOB_TIMEOUT)
    assert status.state is JobState.FAILED
    assert "5 row(s) in the table" in app.get("/").text  # its rows were rolled back
    assert app.get("/asyncjob/jobs").status_int == 200   # demo runs in debug
    # The index embeds progress_snippet() for recent jobs.
    assert len(app.get("/").html.select("[data-asyncjob-status]")) == 2


def test_make_demo_app_returns_wsgi(_apps, sqlite_db_url):
    from tgext.asyncjob.demo import make_demo_app
    _apps.built = True
    wsgi = make_demo_app(sqlite_db_url, workers=2)
    import tg
    conf = tg.config._current_obj()

    class Handle(object):
        app_globals = conf["tg.app_globals"]
        engine = app_globals.sa_engine
        dbsession = conf["DBSession"]

    _apps.add(Handle)
    try:
        assert Handle.app_globals.asyncjob_queue.workers == 2
        assert webtest.TestApp(wsgi).get("/").status_int == 200
    finally:
        forget_config(conf)


def test_plugging_mounts_the_status_controller(make_app, sqlite_db_url):
    """plug() alone serves <root>/asyncjob/status/<id>.json (mounted by tgwiring)."""
    app = make_app(sqlite_db_url, enable='plug')
    q = app.app_globals.asyncjob_queue
    jobid = q.perform(int, ('7',))
    q.wait(jobid, 10)
    answer = app.get(f'/asyncjob/status/{jobid}.json').json
    assert answer['state'] == 'succeeded' and answer['result'] == 7
    app.get('/asyncjob/status/0123456789abcdef0123456789abcdef.json', status=404)
