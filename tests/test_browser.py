"""The progress page in a real headless Chromium, against the demo app served over HTTP.

Uses Debian's /usr/bin/chromium and /usr/bin/chromedriver, never a downloaded browser
or driver: the driver path is given explicitly (so Selenium Manager is not run) and
SE_OFFLINE forbids it to go online anyway. Missing binaries FAIL the test.

Screenshots go to test-artifacts/ (gitignored) on every run. The README shows the ones
in docs/images/: this test writes them there too when ASYNCJOB_UPDATE_SCREENSHOTS=1
(or when one is missing), so that a test run does not dirty the checkout each time:

    ASYNCJOB_UPDATE_SCREENSHOTS=1 python -m pytest tests/test_browser.py
"""

import os
import pathlib
import re
import shutil
import struct
import threading

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ROOT = pathlib.Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
IMAGES = ROOT / "docs" / "images"
# Seconds allowed for the page to load and for a demo job to end (they take ~2 s).
PAGE_TIMEOUT = 15
JOB_TIMEOUT = 30
# The window widths the layout is checked at: a phone, and a wide desktop screen.
PHONE, WIDE = 375, 1400
DESKTOP = 1000  # the width of the other screenshots
# The screenshots this module takes, for the README: name -> window width.
SCREENSHOTS = {
    "index.png": DESKTOP,
    "progress-running.png": DESKTOP,
    "progress-failed.png": DESKTOP,
    "jobs.png": DESKTOP,
    "progress-phone.png": PHONE,
    "job-detail.png": DESKTOP,
}


def _require(path):
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail("%s is missing: install it with `apt-get install -y chromium "
                    "chromium-driver` (this test never downloads a browser)" % path,
                    pytrace=False)


class Demo(object):
    """The demo served over HTTP: ``url``, and ``queue`` to put jobs in directly."""

    def __init__(self, url, built):
        self.url = url
        self.queue = built.app_globals.asyncjob_queue


@pytest.fixture
def demo(_apps, tmp_path):
    """The demo app served by the threaded wsgiref server on 127.0.0.1, a free port."""
    from tgext.asyncjob.demo import build_demo
    from tgext.asyncjob.demo.server import make_demo_server, serve_in_thread

    _apps.built = True
    built = build_demo("sqlite:///%s" % (tmp_path / "demo.sqlite"))
    _apps.add(built)
    server = make_demo_server(built.wsgi_app, "127.0.0.1", 0, quiet=True)
    thread = serve_in_thread(server)
    try:
        yield Demo("http://127.0.0.1:%d" % server.server_address[1], built)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        _forget_config(built.conf)


def _forget_config(conf):
    # Building made the demo's config the process config; later tests that look up
    # "the current application" must not find this one (its queue will be stopped).
    import tg
    tg.config.pop_process_config(conf)


@pytest.fixture
def gate():
    """An event jobs wait on; always opened at teardown so queues can stop."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def browser(tmp_path, monkeypatch):
    """A headless Chromium driven through chromedriver, with a throwaway profile."""
    _require(CHROMIUM)
    _require(CHROMEDRIVER)
    monkeypatch.setenv("SE_OFFLINE", "true")
    monkeypatch.setenv("SE_AVOID_STATS", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--hide-scrollbars", "--window-size=%d,800" % DESKTOP,
                "--user-data-dir=%s" % (tmp_path / "profile")):
        options.add_argument(arg)
    ARTIFACTS.mkdir(exist_ok=True)
    service = Service(executable_path=CHROMEDRIVER,
                      log_output=str(ARTIFACTS / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(PAGE_TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver, name):
    """Save the page as ``name``, the window fitted to the page's height, in
    test-artifacts/ and, when asked (see the module's docstring), in docs/images/."""
    width = SCREENSHOTS[name]
    driver.set_window_size(width, 400)
    # The window is taller than the page's viewport by the (invisible) browser frame.
    height, frame = driver.execute_script(
        "return [Math.ceil(document.documentElement.getBoundingClientRect().height),"
        "        window.outerHeight - window.innerHeight];")
    driver.set_window_size(width, min(max(height, 200), 1200) + frame)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    target = IMAGES / name
    if os.environ.get("ASYNCJOB_UPDATE_SCREENSHOTS") == "1" or not target.exists():
        IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)


def png_size(path):
    """(width, height) of a PNG file, from its IHDR chunk."""
    data = pathlib.Path(path).read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "%s is not a PNG file" % path
    return struct.unpack(">II", data[16:24])


def _text(element):
    """An element's text as read aloud, spaces collapsed (Selenium's ``.text`` puts
    each flex item of the status line on a line of its own)."""
    return " ".join(element.get_attribute("textContent").split())


def _widget(driver):
    from selenium.webdriver.common.by import By
    return driver.find_element(By.CSS_SELECTOR, "[data-asyncjob-status]")


def _start_from_index(driver, url, button_id, **fields):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url + "/")
    for name, value in fields.items():
        field = driver.find_element(By.ID, name)
        field.clear()
        field.send_keys(value)
    driver.find_element(By.ID, button_id).click()
    WebDriverWait(driver, PAGE_TIMEOUT).until(EC.url_contains("/asyncjob/progress/"))


def _wait_state(driver, state):
    from selenium.webdriver.support.ui import WebDriverWait
    WebDriverWait(driver, JOB_TIMEOUT, poll_frequency=0.05).until(
        lambda d: _widget(d).get_attribute("data-state") == state,
        message="the job never showed as %s" % state)


def _wait_bars_drawn(driver):
    """Wait until every bar of the page is drawn at its value (widths animate)."""
    from selenium.webdriver.support.ui import WebDriverWait
    WebDriverWait(driver, PAGE_TIMEOUT).until(lambda d: d.execute_script("""
        var bars = document.querySelectorAll('.asyncjob-bar[aria-valuenow]');
        for (var i = 0; i < bars.length; i++) {
          var fill = bars[i].querySelector('.asyncjob-fill');
          var want = bars[i].clientWidth * bars[i].getAttribute('aria-valuenow') / 100;
          if (Math.abs(fill.getBoundingClientRect().width - want) > 3) { return false; }
        }
        return true;"""), message="the bars are not drawn at their values")


def _wait_bar_drawn(driver, percent):
    """Wait until the filled part of the bar is ``percent`` of it (its width animates)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    fill = driver.find_element(By.CSS_SELECTOR, ".asyncjob-fill")
    bar = driver.find_element(By.CSS_SELECTOR, ".asyncjob-bar")
    WebDriverWait(driver, PAGE_TIMEOUT).until(
        lambda d: abs(fill.size["width"] - bar.size["width"] * percent / 100) <= 3,
        message="the bar is not drawn at %d%%" % percent)


def test_progress_bar_follows_jobs(demo, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # A job of 20 rows, 0.1 s apart: the page polls every 0.5 s, so it sees it move.
    _start_from_index(browser, demo.url, "start", rows="20", delay="0.1")
    seen = []

    def completed(driver):
        # One script reads state and value together: read one by one, the page could
        # update in between and pair "succeeded" with the previous value.
        state, value = driver.execute_script(
            "var w = document.querySelector('[data-asyncjob-status]');"
            "return [w.getAttribute('data-state'),"
            "        w.querySelector('[role=progressbar]').getAttribute('aria-valuenow')];")
        if value is not None and (not seen or seen[-1] != int(value)):
            seen.append(int(value))
        return state == "succeeded"

    WebDriverWait(browser, JOB_TIMEOUT, poll_frequency=0.05).until(
        completed, message="the job never showed as completed")
    assert seen[-1] == 100, seen
    assert any(0 < value < 100 for value in seen), (
        "the bar never showed progress between 0 and 100: %r" % seen)
    assert seen == sorted(seen), seen
    assert browser.find_element(By.CSS_SELECTOR, ".asyncjob-state").text == "Completed"
    assert browser.find_element(By.CSS_SELECTOR, ".asyncjob-percent").text == "100%"
    assert browser.find_element(By.CSS_SELECTOR, ".asyncjob-message").text == \
        "Wrote row 20 of 20"
    _wait_bar_drawn(browser, 100)

    # The way back: the form's page referred the browser here.
    browser.find_element(By.CSS_SELECTOR, "a.asyncjob-back").click()
    WebDriverWait(browser, PAGE_TIMEOUT).until(lambda d: d.current_url == demo.url + "/")
    assert "20 row(s) in the table" in browser.find_element(By.TAG_NAME, "main").text

    # A job that fails on purpose.
    _start_from_index(browser, demo.url, "fail")
    _wait_state(browser, "failed")
    assert browser.find_element(By.CSS_SELECTOR, ".asyncjob-state").text == "Failed"
    percent = int(browser.find_element(By.CSS_SELECTOR, "[role=progressbar]").get_attribute(
        "aria-valuenow"))
    assert 0 < percent < 100  # it failed halfway: the bar keeps where it stopped
    _wait_bar_drawn(browser, percent)
    error = browser.find_element(By.CSS_SELECTOR, ".asyncjob-error")
    assert error.is_displayed()
    # The demo runs in debug mode, where tracebacks (and so messages) are allowed.
    assert error.text == "RuntimeError: this demo job fails on purpose"
    screenshot(browser, "progress-failed.png")

    browser.get(demo.url + "/")
    _wait_bars_drawn(browser)
    screenshot(browser, "index.png")

    # The job list (allowed: the demo runs in debug mode) shows both.
    browser.get(demo.url + "/asyncjob/jobs")
    states = [row.get_attribute("data-state")
              for row in browser.find_elements(By.CSS_SELECTOR, "table.asyncjob-jobs tbody tr")]
    assert states == ["failed", "succeeded"]


def fails_at_once():
    raise LookupError("no such report")


def hold(gate):
    gate.wait(JOB_TIMEOUT)


def export_files(gate):
    from tgext.asyncjob import asyncjob_set_progress
    asyncjob_set_progress(60, {"done": 3, "total": 5, "message": "Exported 3 of 5 files"})
    gate.wait(JOB_TIMEOUT)


def _boxes(driver):
    """Boxes (left, width) of the page's parts, and the page's widths, in CSS pixels."""
    return driver.execute_script("""
        function box(selector) {
          var el = document.querySelector(selector);
          if (!el || el.getClientRects().length === 0) { return null; }
          var r = el.getBoundingClientRect();
          return {left: r.left, right: r.right, width: r.width};
        }
        return {viewport: document.documentElement.clientWidth,
                scroll: document.documentElement.scrollWidth,
                main: box('main'), bar: box('.asyncjob-bar'), line: box('.asyncjob-line'),
                percent: box('.asyncjob-percent'), state: box('.asyncjob-state'),
                id: box('.asyncjob-id')};
    """)


@pytest.mark.parametrize("width", [PHONE, WIDE], ids=["phone", "wide"])
def test_layout_fits_a_phone_and_a_wide_screen(demo, browser, gate, width):
    """The bar spans the page's column at any width (it was 640 px on any screen); a
    failed job with no progress says "Failed" at the bar's left edge (no empty percent
    slot); a queued job reads "Queued" alike in the snippet and on its page."""
    from selenium.webdriver.common.by import By

    browser.set_window_size(width, 800)
    failed = demo.queue.perform(fails_at_once)
    demo.queue.wait(failed, JOB_TIMEOUT)
    browser.get("%s/asyncjob/progress/%s" % (demo.url, failed))
    assert browser.find_element(By.CSS_SELECTOR, ".asyncjob-state").text == "Failed"
    boxes = _boxes(browser)
    assert boxes["viewport"] == width
    assert boxes["scroll"] <= width, "the page scrolls sideways: %r" % boxes
    bar, main = boxes["bar"], boxes["main"]
    assert abs(bar["width"] - main["width"]) <= 1, boxes     # the bar spans the column
    if width == PHONE:
        assert bar["width"] >= width - 2 * 16 - 1, boxes       # all but the page padding
    else:
        assert bar["width"] >= 1000, boxes
        assert abs(main["left"] - (width - main["right"])) <= 1, boxes  # centred
    assert boxes["percent"] is None, boxes                     # no empty percent slot
    assert abs(boxes["state"]["left"] - bar["left"]) <= 1, boxes
    assert boxes["id"]["right"] <= width, boxes                 # the long id wraps

    # A queued job (the demo has one worker, held by the first job).
    demo.queue.perform(hold, (gate,))
    queued = demo.queue.perform(int)
    browser.get("%s/asyncjob/progress/%s" % (demo.url, queued))
    assert _text(browser.find_element(By.CSS_SELECTOR, ".asyncjob-line")) == "Queued"
    browser.get(demo.url + "/")
    widget = browser.find_element(
        By.CSS_SELECTOR, '[data-asyncjob-status$="/%s.json"]' % queued)
    assert _text(widget.find_element(By.CSS_SELECTOR, ".asyncjob-line")) == "Queued"
    assert _boxes(browser)["scroll"] <= width
    gate.set()
    demo.queue.wait(queued, JOB_TIMEOUT)

    # What a job half done looks like at this width, for the README.
    gate.clear()
    running = demo.queue.perform(export_files, (gate,))
    browser.get("%s/asyncjob/progress/%s" % (demo.url, running))
    _wait_state(browser, "running")
    _wait_bar_drawn(browser, 60)
    assert _text(browser.find_element(By.CSS_SELECTOR, ".asyncjob-line")) == "60% Running"
    # A wide screenshot would show mostly margins: the README shows a desktop one.
    screenshot(browser, "progress-phone.png" if width == PHONE else "progress-running.png")
    gate.set()
    demo.queue.wait(running, JOB_TIMEOUT)


def refuse_upload(gate):
    from tgext.asyncjob.errors import JobFailed
    gate.wait(JOB_TIMEOUT)
    raise JobFailed("The file is larger than 10 MB.")


def test_a_job_failing_while_watched_shows_its_message_alone(demo, browser, gate):
    """The widget's own rendering (asyncjob.js) of a JobFailed: the message, no type."""
    from selenium.webdriver.common.by import By

    jobid = demo.queue.perform(refuse_upload, (gate,))
    browser.get("%s/asyncjob/progress/%s" % (demo.url, jobid))
    _wait_state(browser, "running")
    gate.set()
    _wait_state(browser, "failed")
    assert browser.find_element(By.CSS_SELECTOR, ".asyncjob-error").text == \
        "The file is larger than 10 MB."
    assert _text(browser.find_element(By.CSS_SELECTOR, ".asyncjob-line")) == "Failed"


def _row_state(driver, jobid):
    """The state the dashboard's row of ``jobid`` shows, ``None`` if it has no row
    (looked up afresh: each action reloads the page)."""
    rows = driver.find_elements("css selector", 'tr[data-job="%s"]' % jobid)
    return rows[0].get_attribute("data-state") if rows else None


def _click_action(driver, jobid, action):
    """Click ``action``'s button in ``jobid``'s row and wait for the page it leads to."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    # The old page is marked on its window object, which the new page does not have.
    # (Waiting for an element of the old page to go stale asked Chrome about a node of
    # a document being replaced: it sometimes answered "Node ... does not belong to
    # the document", an error rather than staleness, and the test failed.) Scripts run
    # while the documents change over may fail too: the wait asks again.
    driver.execute_script("window.asyncjobOldPage = true")
    driver.find_element(
        "css selector", 'tr[data-job="%s"] button[data-action="%s"]' % (jobid, action)).click()
    WebDriverWait(driver, PAGE_TIMEOUT, ignored_exceptions=(WebDriverException,)).until(
        lambda d: d.execute_script(
            "return !window.asyncjobOldPage && document.readyState === 'complete'"),
        message="the %s did not lead to a new, loaded page" % action)


def _count(driver, state):
    return int(driver.find_element(
        "css selector", '[data-count-state="%s"] .asyncjob-count' % state).text)


def test_dashboard_cancels_and_retries_with_a_click(demo, browser, gate):
    """The jobs dashboard, clicked: Cancel on a queued job and on a running one, Retry
    on a failed one (a new job linked both ways), each POSTed with its CSRF token."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    failed = demo.queue.perform(fails_at_once)
    demo.queue.wait(failed, JOB_TIMEOUT)
    running = demo.queue.perform(export_files, (gate,))
    wait = WebDriverWait(browser, JOB_TIMEOUT, poll_frequency=0.05)
    wait.until(lambda d: demo.queue.get_status(running).state.value == "running")
    queued = demo.queue.perform(hold, (gate,))  # the demo's one worker is busy

    browser.get(demo.url + "/asyncjob/jobs")
    assert [_row_state(browser, j) for j in (queued, running, failed)] == [
        "queued", "running", "failed"]
    assert (_count(browser, "queued"), _count(browser, "running"),
            _count(browser, "failed"), _count(browser, "all")) == (1, 1, 1, 3)

    _click_action(browser, queued, "cancel")
    assert _row_state(browser, queued) == "cancelled"
    assert "cancelled" in browser.find_element(By.CSS_SELECTOR, ".asyncjob-notice").text
    assert demo.queue.get_status(queued).state.value == "cancelled"

    # A running job is asked to stop; it ends once it checks (this one: when let go).
    _click_action(browser, running, "cancel")
    assert "asked to stop" in browser.find_element(By.CSS_SELECTOR, ".asyncjob-notice").text
    assert demo.queue.get_status(running).state.value == "running"
    gate.set()
    assert demo.queue.wait(running, JOB_TIMEOUT).finished

    _click_action(browser, failed, "retry")
    notice = browser.find_element(By.CSS_SELECTOR, ".asyncjob-notice")
    assert "queued again as" in notice.text
    retried = demo.queue.get_status(failed).retried_as
    assert retried and retried != failed
    assert demo.queue.get_status(retried).retry_of == failed
    # The copy fails alike (the same callable); the page shows it once reloaded.
    demo.queue.wait(retried, JOB_TIMEOUT)
    browser.get(demo.url + "/asyncjob/jobs")
    assert _row_state(browser, retried) == "failed"
    assert _count(browser, "failed") == 2


    # The detail page of the retry links back to the job it copied, and the copied
    # one to its retry.
    browser.get("%s/asyncjob/job/%s" % (demo.url, retried))
    link = browser.find_element(By.CSS_SELECTOR, '[data-field="Retry of"] a')
    assert link.get_attribute("href").endswith("/asyncjob/job/%s" % failed)
    link.click()
    wait.until(lambda d: d.current_url.endswith("/asyncjob/job/%s" % failed))
    assert browser.find_element(By.CSS_SELECTOR, '[data-field="Retried as"] a').get_attribute(
        "href").endswith("/asyncjob/job/%s" % retried)
    screenshot(browser, "job-detail.png")

    browser.get(demo.url + "/asyncjob/jobs?state=failed")
    assert {_row_state(browser, j) for j in (failed, retried)} == {"failed"}
    assert _row_state(browser, queued) is None
    browser.get(demo.url + "/asyncjob/jobs")
    screenshot(browser, "jobs.png")


def test_readme_shows_the_screenshots_this_test_takes():
    """README's images are exactly the PNG files written by the tests above."""
    readme = (ROOT / "README.rst").read_text()
    shown = re.findall(r"^\.\. image:: docs/images/(\S+)$", readme, re.M)
    assert sorted(shown) == sorted(SCREENSHOTS)
    for name, width in SCREENSHOTS.items():
        assert png_size(IMAGES / name)[0] == width, name
