"""The jobs dashboard (tgext.asyncjob.webjobs) through WebTest on real TG apps: access,
CSRF, POST-only actions, the detail page, filters, counts and pages beyond 500 jobs,
on every backend whose tracker lists jobs."""

import urllib.parse

import pytest

from dashjobs import always_fails, nothing
from services import wait_for
from test_rq import rq_app, rq_redis_url, rq_setup, workers  # noqa: F401 - fixtures
from test_web import (JOB_TIMEOUT, WebRoot, gate, occupy_worker, queue_of,  # noqa: F401
                      web_app)

from tgext.asyncjob import webcsrf
from tgext.asyncjob.trackers.redisdb import RedisProgressTracker


def state_of(app, jobid):
    return queue_of(app).get_status(jobid).state.value


def token_of(page):
    """The CSRF token the page's forms carry (all the same)."""
    tokens = {field["value"] for field in page.html.select("input[name=_csrf]")}
    assert len(tokens) == 1, page.text
    return tokens.pop()


def json_token(app, jobid):
    """The token a script reads from ``job/<id>.json`` (its cookie set alike)."""
    return app.get("/asyncjob/job/%s.json" % jobid).json["csrf_token"]


def where(response):
    """The path and query of a redirect's Location."""
    parts = urllib.parse.urlsplit(response.headers["Location"])
    return parts.path, dict(urllib.parse.parse_qsl(parts.query))


def button(page, action, jobid):
    return page.html.select_one('form[action$="/%s/%s"]' % (action, jobid))


# ------------------------------------------------------------ access and CSRF

def test_actions_are_post_only(web_app, gate):
    app = web_app(debug=True)
    jobid = occupy_worker(app, gate)
    for action in ("cancel", "retry", "delete"):
        response = app.get("/asyncjob/%s/%s" % (action, jobid), status=405)
        assert response.headers["Allow"] == "POST"
    assert state_of(app, jobid) == "running"


def test_without_access_pages_and_actions_are_403(web_app, gate):
    app = web_app()  # not debug, no asyncjob.jobs_access: denied
    jobid = occupy_worker(app, gate)
    app.get("/asyncjob/jobs", status=403)
    app.get("/asyncjob/jobs.json", status=403)
    app.get("/asyncjob/job/%s" % jobid, status=403)
    app.get("/asyncjob/job/%s.json" % jobid, status=403)
    # Even with a token that would be good: access is checked first.
    app.set_cookie(webcsrf.COOKIE, "0" * 32)
    token = webcsrf._sign(webcsrf.secret_of(app.config), "0" * 32, "")
    for action in ("cancel", "retry", "delete"):
        page = app.post("/asyncjob/%s/%s" % (action, jobid), {"_csrf": token}, status=403)
        assert "asyncjob.jobs_access" in page.text
    assert state_of(app, jobid) == "running"


def test_a_post_without_a_good_token_is_403(web_app, gate):
    app = web_app(debug=True)
    occupy_worker(app, gate)
    victim = queue_of(app).perform(lambda: "never")
    page = app.get("/asyncjob/job/%s" % victim)
    token = token_of(page)
    url = "/asyncjob/cancel/%s" % victim
    assert "missing or wrong" in app.post(url, status=403).text          # no token
    wrong = token[:-1] + ("1" if token[-1] == "0" else "0")
    app.post(url, {"_csrf": wrong}, status=403)                          # a wrong one
    app.post(url, {"_csrf": token}, headers={"Origin": "http://evil.example"}, status=403)
    app.post(url, {"_csrf": token}, headers={"Referer": "http://evil.example/x"}, status=403)
    app.post(url, {"_csrf": token}, headers={"Origin": "null"}, status=403)
    app.post(url + ".json", headers={webcsrf.HEADER: "bad"}, status=403)
    # The token belongs to its cookie: another browser's cookie does not go with it.
    app.set_cookie(webcsrf.COOKIE, "1" * 32)
    app.post(url, {"_csrf": token}, status=403)
    # ... nor to a cookie-less request.
    app.reset()
    assert "cookie is missing" in app.post(url, {"_csrf": token}, status=403).text
    assert state_of(app, victim) == "queued"


def test_the_token_is_bound_to_the_user(web_app, gate):
    app = web_app(debug=True)
    occupy_worker(app, gate)
    victim = queue_of(app).perform(lambda: "never")
    token = token_of(app.get("/asyncjob/job/%s" % victim,
                             extra_environ={"REMOTE_USER": "alice"}))
    app.post("/asyncjob/cancel/%s" % victim, {"_csrf": token},
             extra_environ={"REMOTE_USER": "mallory"}, status=403)
    assert state_of(app, victim) == "queued"
    app.post("/asyncjob/cancel/%s" % victim, {"_csrf": token},
             extra_environ={"REMOTE_USER": "alice"}, status=303)
    assert state_of(app, victim) == "cancelled"


def test_the_secret_comes_from_the_configuration(web_app):
    conf = {"asyncjob.secret": "s1", "session.secret": "s2"}
    assert webcsrf.secret_of(conf) == b"s1"
    assert webcsrf.secret_of({"beaker.session.secret": "s3"}) == b"s3"
    made = webcsrf.secret_of({})
    assert len(made) == 32 and made == webcsrf.secret_of({})  # one per process
    # An app's asyncjob.secret signs its tokens: another secret, another token.
    one = web_app(debug=True, **{"asyncjob.secret": "one"})
    token = json_token(one, queue_of(one).perform(int))
    assert token == webcsrf._sign(b"one", one.cookies[webcsrf.COOKIE], "")


def test_cancel_from_the_detail_page(web_app, gate):
    app = web_app(debug=True)
    first = occupy_worker(app, gate)
    victim = queue_of(app).perform(lambda: "never")
    page = app.get("/asyncjob/job/%s" % victim)
    form = button(page, "cancel", victim)
    assert form is not None and form["method"] == "post"
    assert button(page, "delete", victim) is None    # not finished
    response = app.post(form["action"], {f["name"]: f["value"] for f in form.select("input")},
                        headers={"Origin": "http://localhost"}, status=303)
    assert where(response) == ("/asyncjob/job/%s" % victim,
                               {"notice": "cancelled", "job": victim})
    assert state_of(app, victim) == "cancelled"
    page = response.follow()
    assert "cancelled." in page.html.select_one(".asyncjob-notice").text
    assert button(page, "cancel", victim) is None
    assert button(page, "delete", victim) is not None
    # A running job is asked to stop (cooperative).
    result = app.post("/asyncjob/cancel/%s.json" % first,
                      headers={webcsrf.HEADER: json_token(app, first)}).json
    assert result == {"id": first, "action": "cancel", "outcome": "cancel_requested",
                      "ok": True}
    gate.set()


# ------------------------------------------------------------ the dashboard, each backend

def post_form(app, page, action, jobid, status=303):
    """Submit the ``action`` button of ``jobid`` on ``page`` as a browser would."""
    form = button(page, action, jobid)
    assert form is not None, "no %s button for %s" % (action, jobid)
    fields = {f["name"]: f["value"] for f in form.select("input")}
    return app.post(form["action"], fields, headers={"Origin": "http://localhost"},
                    status=status)


def rows(page):
    return {row["data-job"]: row["data-state"]
            for row in page.html.select("table.asyncjob-jobs tbody tr")}


def counts(page):
    return {link["data-count-state"]: int(link.select_one(".asyncjob-count").text)
            for link in page.html.select("[data-count-state]")}


def wait_state(app, jobid, state):
    return wait_for(lambda: state_of(app, jobid) == state, JOB_TIMEOUT,
                    message=lambda: "%s is %s, not %s" % (jobid, state_of(app, jobid), state))


@pytest.fixture(params=["threads-memory", "threads-redis", "sqlalchemy-postgresql", "rq"])
def dashboard_app(request, make_app, sqlite_db_url):
    """A plugged app whose jobs pages are open, on each backend whose tracker lists."""
    access = {"jobs_access": True, "show_tracebacks": True, "show_arguments": True}
    kind = request.param
    if kind == "threads-memory":
        return make_app(sqlite_db_url, plug_options=access)
    if kind == "threads-redis":
        request.getfixturevalue("redis_client")
        tracker = RedisProgressTracker(url=request.getfixturevalue("redis_url"))
        return make_app(sqlite_db_url, plug_options=dict(access, progress_tracker=tracker))
    if kind == "sqlalchemy-postgresql":
        return make_app(request.getfixturevalue("postgres_db_url"),
                        plug_options=dict(access, backend="sqlalchemy"))
    request.getfixturevalue("redis_client")  # flushed: the tracker's records of other tests
    request.getfixturevalue("workers")()
    return request.getfixturevalue("rq_app")(**access)


def test_the_dashboard_on_every_listing_backend(dashboard_app):
    """List, count, filter, cancel a queued job, retry a failed one (linked both
    ways), delete a finished one: the same pages and clicks on every backend."""
    app = dashboard_app
    q = queue_of(app)
    failed = q.perform(always_fails, ("q3",))
    wait_state(app, failed, "failed")
    queued = q.perform(nothing, (1,), {"two": 2}, delay=3600)  # queued for an hour

    page = app.get("/asyncjob/jobs")
    assert rows(page) == {queued: "queued", failed: "failed"}
    assert counts(page) == {"all": 2, "queued": 1, "running": 0, "succeeded": 0,
                            "failed": 1, "cancelled": 0}
    assert set(rows(app.get("/asyncjob/jobs", {"state": "failed"}))) == {failed}
    name = q.get_status(queued).name
    assert set(rows(app.get("/asyncjob/jobs", {"name": name}))) == {queued}
    assert rows(app.get("/asyncjob/jobs", {"name": name, "state": "failed"})) == {}

    # Cancel the queued job from the list: back to the list, which says so.
    response = post_form(app, page, "cancel", queued)
    assert where(response)[0] == "/asyncjob/jobs"
    page = response.follow()
    assert rows(page)[queued] == "cancelled"
    assert "cancelled" in page.html.select_one(".asyncjob-notice").text

    # Retry the failed one: a new job, the same callable and arguments, linked both ways.
    response = post_form(app, page, "retry", failed)
    new = where(response)[1]["new"]
    wait_state(app, new, "failed")
    assert q.get_status(new).retry_of == failed
    assert q.get_status(failed).retried_as == new
    assert q.get_status(new).args in (["q3"], ("q3",))
    detail = app.get("/asyncjob/job/%s" % new)
    assert detail.html.select_one('[data-field="Retry of"] a')["href"] == \
        "/asyncjob/job/%s" % failed
    assert "q3" in detail.html.select_one('[data-field="Arguments"]').text
    old = app.get("/asyncjob/job/%s" % failed)
    assert old.html.select_one('[data-field="Retried as"] a')["href"] == \
        "/asyncjob/job/%s" % new
    assert button(old, "retry", failed) is None  # retried once already

    # Delete the cancelled job from its page: back to the list, the job gone.
    detail = app.get("/asyncjob/job/%s" % queued)
    response = post_form(app, detail, "delete", queued)
    assert where(response) == ("/asyncjob/jobs", {"notice": "deleted", "job": queued})
    assert queued not in rows(response.follow())
    app.get("/asyncjob/job/%s" % queued, status=404)
    assert counts(app.get("/asyncjob/jobs"))["all"] == 2


# ------------------------------------------------------------ pages beyond 500 jobs

MANY = 523  # more than the 500 a page may show, and not a multiple of the page sizes


def page_through(app, limit):
    """Follow the "Older" links from the first page; every page's job ids, in order."""
    pages = []
    url = "/asyncjob/jobs?limit=%d" % limit
    while url:
        page = app.get(url)
        pages.append([row["data-job"] for row in page.html.select("tbody tr")])
        older = page.html.select_one('a[rel="next"]')
        url = older["href"] if older is not None else None
    return pages


def check_pages(app, ids):
    """``ids`` (oldest first) read back newest first, on pages of 500 and of 50."""
    newest_first = list(reversed(ids))
    pages = page_through(app, 500)
    assert [len(p) for p in pages] == [500, MANY - 500]
    assert sum(pages, []) == newest_first
    pages = page_through(app, 50)
    assert len(pages) == MANY // 50 + 1
    assert sum(pages, []) == newest_first
    # The last page links back; JSON pages say where the next one starts.
    last = app.get("/asyncjob/jobs", {"offset": 500, "limit": 50})
    assert last.html.select_one('a[rel="prev"]')["href"] == "/asyncjob/jobs?offset=450"
    assert "Jobs 501" in last.html.select_one(".asyncjob-range").text
    listing = app.get("/asyncjob/jobs.json", {"offset": 450, "limit": 50}).json
    assert [job["id"] for job in listing["jobs"]] == newest_first[450:500]
    assert listing["next_offset"] == 500
    assert app.get("/asyncjob/jobs.json", {"offset": 500}).json["next_offset"] is None


def test_pages_beyond_500_jobs_on_the_memory_tracker(web_app):
    app = web_app(debug=True)
    q = queue_of(app)
    ids = [q.perform(nothing, (n,)) for n in range(MANY)]
    for jobid in ids:
        q.wait(jobid, JOB_TIMEOUT)
    check_pages(app, ids)
    assert counts(app.get("/asyncjob/jobs"))["succeeded"] == MANY


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_pages_beyond_500_jobs_on_the_sqlalchemy_store(make_app, request, database):
    url = request.getfixturevalue({"sqlite": "sqlite_db_url",
                                   "postgresql": "postgres_db_url"}[database])
    # No worker in this process: the jobs stay queued rows, listed from the table.
    app = make_app(url, root=WebRoot, extra_config={
        "debug": True, "asyncjob.backend": "sqlalchemy",
        "asyncjob.backend.in_process": "false"})
    q = queue_of(app)
    ids = [q.perform(nothing, (n,)) for n in range(MANY)]
    check_pages(app, ids)
    page = app.get("/asyncjob/jobs", {"state": "queued", "offset": 520})
    assert len(rows(page)) == MANY - 520
    assert counts(page)["queued"] == MANY


# ------------------------------------------------------------ what the pages show, and refuse

def test_arguments_are_shown_only_where_allowed(web_app, gate):
    secret = {"card": "4111 1111 1111 1111"}
    app = web_app(**{"asyncjob.jobs_access": True})  # not debug: no arguments rule set
    jobid = queue_of(app).perform(nothing, ("alice",), secret)
    queue_of(app).wait(jobid, JOB_TIMEOUT)
    for url in ("/asyncjob/job/%s" % jobid, "/asyncjob/job/%s.json" % jobid,
                "/asyncjob/status/%s.json" % jobid, "/asyncjob/jobs", "/asyncjob/jobs.json"):
        text = app.get(url).text
        assert "4111" not in text and "alice" not in text, url
    assert app.get("/asyncjob/job/%s" % jobid).html.select_one(
        '[data-field="Arguments"] dd').text == "hidden"
    app.config["asyncjob.show_arguments"] = True
    page = app.get("/asyncjob/job/%s" % jobid)
    assert "4111" in page.html.select_one('[data-field="Arguments"]').text
    assert app.get("/asyncjob/job/%s.json" % jobid).json["kwargs"] == secret
    # The status JSON is open to anyone holding the id: never the arguments there.
    assert "args" not in app.get("/asyncjob/status/%s.json" % jobid).json


def test_notices_and_redirects_take_nothing_from_the_request(web_app, gate):
    app = web_app(debug=True)
    occupy_worker(app, gate)
    victim = queue_of(app).perform(nothing)
    page = app.get("/asyncjob/jobs", {"notice": "<b>hacked</b>", "job": victim})
    assert page.html.select_one(".asyncjob-notice") is None
    page = app.get("/asyncjob/jobs", {"notice": "deleted", "job": "<b>x</b>"})
    assert page.html.select_one(".asyncjob-notice") is None
    token = json_token(app, victim)
    for target in ("http://evil.example/asyncjob/jobs", "//evil.example/asyncjob/jobs",
                   "/elsewhere", "/asyncjob/job/../../x", "/asyncjob/jobs/../x",
                   "/asyncjob/job/%s/../../../x" % victim):
        response = app.post("/asyncjob/cancel/%s" % victim, {"_csrf": token, "next": target},
                            status=303)
        assert where(response)[0] == "/asyncjob/job/%s" % victim, target
        assert "evil" not in response.headers["Location"]
    # The list it came from, filters kept: back there.
    response = app.post("/asyncjob/cancel/%s" % victim,
                        {"_csrf": token, "next": "/asyncjob/jobs?state=queued&offset=50"})
    assert where(response) == ("/asyncjob/jobs", {"state": "queued", "offset": "50",
                                                  "notice": "not_cancelled", "job": victim})


def test_actions_on_jobs_not_in_a_state_for_them(web_app, gate):
    app = web_app(debug=True)
    running = occupy_worker(app, gate)
    done = queue_of(app).perform(nothing)
    token = json_token(app, running)
    post = lambda action, jobid, status: app.post(  # noqa: E731
        "/asyncjob/%s/%s.json" % (action, jobid), headers={webcsrf.HEADER: token},
        status=status).json
    assert post("delete", running, 409)["outcome"] == "not_deleted"
    assert post("retry", running, 409)["outcome"] == "not_retried"
    gate.set()
    queue_of(app).wait(done, JOB_TIMEOUT)
    assert post("cancel", done, 409)["outcome"] == "not_cancelled"
    assert post("retry", done, 409)["outcome"] == "not_retried"  # it succeeded
    assert post("delete", done, 200)["outcome"] == "deleted"
    app.post("/asyncjob/delete/%s.json" % done, headers={webcsrf.HEADER: token}, status=404)
    app.post("/asyncjob/delete/not-a-job", headers={webcsrf.HEADER: token}, status=404)
    # A lambda has no import path: it cannot be queued again from its record.
    lost = queue_of(app).perform(lambda: 1 / 0)
    queue_of(app).wait(lost, JOB_TIMEOUT)
    answer = app.post("/asyncjob/retry/%s.json" % lost, headers={webcsrf.HEADER: token},
                      status=409).json
    assert "cannot be retried" in answer["error"]


def test_bad_listing_parameters_are_400(web_app):
    app = web_app(debug=True)
    for params in ({"state": "sleeping"}, {"offset": "-1"}, {"offset": "x"},
                   {"limit": "0"}, {"name": "x" * 301}):
        page = app.get("/asyncjob/jobs", params, status=400)
        assert page.html.select_one(".asyncjob-error").text, params
    assert app.get("/asyncjob/jobs.json", {"limit": "9999"}).json["limit"] == 500


def test_a_tracker_that_cannot_list_is_501(web_app):
    from test_web import LegacyTracker
    app = web_app(debug=True, plug_options={"progress_tracker": LegacyTracker()})
    app.get("/asyncjob/jobs", status=501)
    jobid = queue_of(app).perform(nothing)
    token = json_token(app, jobid)
    wait_for(lambda: not queue_of(app).tracker.entries, JOB_TIMEOUT)
    answer = app.post("/asyncjob/delete/%s.json" % jobid, headers={webcsrf.HEADER: token},
                      status=501).json
    assert "cannot" in answer["error"]


def test_a_tracker_outage_is_503_on_every_dashboard_url(web_app, redis_server):
    tracker = RedisProgressTracker(url=redis_server.url, socket_timeout=2)
    app = web_app(debug=True, plug_options={"progress_tracker": tracker})
    jobid = queue_of(app).perform(nothing)
    queue_of(app).wait(jobid, JOB_TIMEOUT)
    token = json_token(app, jobid)
    redis_server.stop()
    app.get("/asyncjob/jobs", status=503)
    app.get("/asyncjob/jobs.json", status=503)
    app.get("/asyncjob/job/%s" % jobid, status=503)
    for action in ("cancel", "retry", "delete"):
        app.post("/asyncjob/%s/%s" % (action, jobid), {"_csrf": token}, status=503)


def test_the_csrf_cookie_is_private_to_the_mount_point(web_app):
    app = web_app(debug=True)
    cookie = app.get("/asyncjob/jobs").headers["Set-Cookie"]
    assert cookie.startswith(webcsrf.COOKIE + "=")
    for part in ("HttpOnly", "SameSite=Strict", "Path=/asyncjob"):
        assert part.lower() in cookie.lower(), cookie
    assert "Set-Cookie" not in app.get("/asyncjob/jobs").headers  # kept, not renewed
    assert "secure" in app.get("/asyncjob/jobs", extra_environ={
        "wsgi.url_scheme": "https", "HTTP_COOKIE": ""}).headers["Set-Cookie"].lower()
