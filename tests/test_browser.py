"""The progress page in a real headless Chromium, against the demo app served over HTTP.

Uses Debian's /usr/bin/chromium and /usr/bin/chromedriver, never a downloaded browser
or driver: the driver path is given explicitly (so Selenium Manager is not run) and
SE_OFFLINE forbids it to go online anyway. Missing binaries FAIL the test.
Screenshots go to test-artifacts/ (gitignored).
"""

import os
import pathlib

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = pathlib.Path(__file__).resolve().parent.parent / "test-artifacts"
# Seconds allowed for the page to load and for a demo job to end (they take ~2 s).
PAGE_TIMEOUT = 15
JOB_TIMEOUT = 30


def _require(path):
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail("%s is missing: install it with `apt-get install -y chromium "
                    "chromium-driver` (this test never downloads a browser)" % path,
                    pytrace=False)


@pytest.fixture
def demo_url(_apps, tmp_path):
    """The demo app served by the threaded wsgiref server on 127.0.0.1, a free port."""
    from tgext.asyncjob.demo import build_demo
    from tgext.asyncjob.demo.server import make_demo_server, serve_in_thread

    _apps.built = True
    demo = build_demo("sqlite:///%s" % (tmp_path / "demo.sqlite"))
    _apps.add(demo)
    server = make_demo_server(demo.wsgi_app, "127.0.0.1", 0, quiet=True)
    thread = serve_in_thread(server)
    try:
        yield "http://127.0.0.1:%d" % server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        _forget_config(demo.conf)


def _forget_config(conf):
    # Building made the demo's config the process config; later tests that look up
    # "the current application" must not find this one (its queue will be stopped).
    import tg
    tg.config.pop_process_config(conf)


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
                "--window-size=1000,800", "--user-data-dir=%s" % (tmp_path / "profile")):
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


def _widget(driver):
    from selenium.webdriver.common.by import By
    return driver.find_element(By.CSS_SELECTOR, "[data-asyncjob-status]")


def _start_from_index(driver, url, button_id, screenshot=None, **fields):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url + "/")
    if screenshot:
        driver.save_screenshot(str(ARTIFACTS / screenshot))
    for name, value in fields.items():
        field = driver.find_element(By.ID, name)
        field.clear()
        field.send_keys(value)
    driver.find_element(By.ID, button_id).click()
    WebDriverWait(driver, PAGE_TIMEOUT).until(EC.url_contains("/asyncjob/progress/"))


def _wait_bar_drawn(driver, percent):
    """Wait until the filled part of the bar is ``percent`` of it (its width animates)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    fill = driver.find_element(By.CSS_SELECTOR, ".asyncjob-fill")
    bar = driver.find_element(By.CSS_SELECTOR, ".asyncjob-bar")
    WebDriverWait(driver, PAGE_TIMEOUT).until(
        lambda d: abs(fill.size["width"] - bar.size["width"] * percent / 100) <= 3,
        message="the bar is not drawn at %d%%" % percent)


def test_progress_bar_follows_jobs(demo_url, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # A job of 20 rows, 0.1 s apart: the page polls every 0.5 s, so it sees it move.
    _start_from_index(browser, demo_url, "start", rows="20", delay="0.1")
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
            if 0 < int(value) < 100 and not (ARTIFACTS / "progress-running.png").exists():
                driver.save_screenshot(str(ARTIFACTS / "progress-running.png"))
        return state == "succeeded"

    (ARTIFACTS / "progress-running.png").unlink(missing_ok=True)
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
    browser.save_screenshot(str(ARTIFACTS / "progress-completed.png"))

    # A job that fails on purpose.
    _start_from_index(browser, demo_url, "fail", screenshot="index.png")
    WebDriverWait(browser, JOB_TIMEOUT, poll_frequency=0.05).until(
        lambda d: _widget(d).get_attribute("data-state") == "failed",
        message="the failing job never showed as failed")
    assert browser.find_element(By.CSS_SELECTOR, ".asyncjob-state").text == "Failed"
    percent = int(browser.find_element(By.CSS_SELECTOR, "[role=progressbar]").get_attribute(
        "aria-valuenow"))
    assert 0 < percent < 100  # it failed halfway: the bar keeps where it stopped
    _wait_bar_drawn(browser, percent)
    browser.save_screenshot(str(ARTIFACTS / "progress-failed.png"))
    error = browser.find_element(By.CSS_SELECTOR, ".asyncjob-error")
    assert error.is_displayed()
    assert error.text == "RuntimeError: this demo job fails on purpose"

    # The job list (allowed: the demo runs in debug mode) shows both.
    browser.get(demo_url + "/asyncjob/jobs")
    states = [row.get_attribute("data-state")
              for row in browser.find_elements(By.CSS_SELECTOR, "table.asyncjob-jobs tbody tr")]
    assert states == ["failed", "succeeded"]
    browser.save_screenshot(str(ARTIFACTS / "jobs.png"))
