"""Smoke tests of the test infrastructure itself."""

import sqlalchemy
import redis
import pytest
import tg
from tg import expose

from services import RedisServer, redis_ping, wait_for
from sampleapp import model
from sampleapp.controllers.root import RootController


def test_redis_client_roundtrip(redis_client):
    redis_client.set("asyncjob-test-key", "value")
    assert redis_client.get("asyncjob-test-key") == b"value"


def test_redis_client_starts_flushed(redis_client):
    # The previous test's key must be gone.
    assert redis_client.get("asyncjob-test-key") is None


def test_postgres_schema_is_isolated(postgres_db_url):
    engine = sqlalchemy.create_engine(postgres_db_url)
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("CREATE TABLE probe (id int)"))
            schema = conn.execute(sqlalchemy.text("SELECT current_schema()")).scalar()
        assert schema.startswith("t_")
    finally:
        engine.dispose()


def test_app_builds_and_serves_rows(make_app, db_url):
    app = make_app(db_url, enable="none")
    assert app.get("/rows").json == {"rows": []}
    app.get("/add_row", params={"name": "a", "value": "1"})
    app.post("/add_row", params={"name": "b"})
    assert app.get("/rows").json == {"rows": [
        {"id": 1, "name": "a", "value": 1},
        {"id": 2, "name": "b", "value": None},
    ]}
    # Committed by the transaction manager: visible outside the app too.
    with app.engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT count(*) FROM rows")).scalar() == 2
    assert "Hello world" in app.get("/").text
    assert app.get("/groups").json == {"groups": []}


def test_custom_root_controller(make_app, sqlite_db_url):
    class Root(RootController):
        @expose("json")
        def whoami(self):
            return dict(package=tg.config["package_name"])

    app = make_app(sqlite_db_url, enable="none", root=Root)
    assert app.get("/whoami").json == {"package": "sampleapp"}
    assert app.get("/rows").json == {"rows": []}


def test_two_apps_at_once(make_app, tmp_path):
    first = make_app("sqlite:///%s" % (tmp_path / "one.sqlite"), enable="none")
    second = make_app(
        "sqlite:///%s" % (tmp_path / "two.sqlite"),
        enable="none",
        dbsession=model.new_session(),
    )
    assert first.dbsession is model.DBSession
    assert second.dbsession is not first.dbsession
    first.post("/add_row", params={"name": "first"})
    second.post("/add_row", params={"name": "second"})
    assert [r["name"] for r in first.get("/rows").json["rows"]] == ["first"]
    assert [r["name"] for r in second.get("/rows").json["rows"]] == ["second"]


def test_globals_class_and_extra_config(make_app, sqlite_db_url):
    class MyGlobals(object):
        marker = "mine"

    app = make_app(
        sqlite_db_url, enable="none", globals_class=MyGlobals,
        extra_config={"custom.option": "x", "debug": True},
    )
    assert app.app_globals.marker == "mine"
    assert app.config["custom.option"] == "x"
    assert app.config["debug"] is True


def test_private_redis_server_stop_and_restart():
    server = RedisServer().start()
    try:
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        assert client.get("k") == b"v"
        client.close()
        port = server.port

        server.stop()
        assert not server.running
        assert not redis_ping(server.url, timeout=0.5)

        server.start()
        assert server.port == port
        wait_for(lambda: redis_ping(server.url), message="restarted redis not reachable")
        # Persistence is off: the restarted server is empty.
        client = redis.Redis.from_url(server.url)
        assert client.get("k") is None
        client.close()
    finally:
        server.stop()


def test_redis_server_fixture(redis_server):
    assert redis_ping(redis_server.url)


def test_wait_for():
    assert wait_for(lambda: 42, timeout=1) == 42
    state = {"n": 0}

    def later():
        state["n"] += 1
        return state["n"] >= 3

    assert wait_for(later, timeout=5) is True
    with pytest.raises(AssertionError, match="never true"):
        wait_for(lambda: False, timeout=0.05, message="never true")
    with pytest.raises(AssertionError, match="lazy 7"):
        wait_for(lambda: False, timeout=0.05, message=lambda: "lazy %d" % 7)
