"""The jobs dashboard (tgext.asyncjob.webjobs) through WebTest on real TG apps: access,
CSRF, POST-only actions, the detail page, filters, counts and pages beyond 500 jobs,
on every backend whose tracker lists jobs."""

import urllib.parse

from test_web import gate, occupy_worker, queue_of, web_app  # noqa: F401 - fixtures

from tgext.asyncjob import webcsrf


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
