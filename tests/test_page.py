"""The analyst's page in a real browser: Debian's chromium, driven by selenium, against a real API server.

In CI (``CI`` set, as ``.ci/run`` sets it, after installing chromium) a missing browser fails these tests; elsewhere
they are skipped, saying why. The README's screenshot comes from the first test, run on the trained quickstart model:

    WEIBO_SENTIMENT_SCREENSHOT=docs/page.png WEIBO_SENTIMENT_PAGE_CKPT=lightning_logs/version_0/checkpoints/last.ckpt \
        python -m pytest tests/test_page.py -k pasted
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from conftest import real_rows, write_csv
from test_serve import post
from test_stopping import start_server, stopped

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
MAX_TEXTS = 64
if not (CHROMIUM and CHROMEDRIVER):
    reason = "no chromium and chromedriver on PATH (apt-get install chromium chromium-driver)"
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the browser tests: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.e2e  # every test here starts processes of ours (see pyproject.toml)


def open_browser(profile: Path) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-quic", f"--user-data-dir={profile}", "--window-size=1280,1700"):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def server(quickstart: dict, tmp_path_factory: pytest.TempPathFactory):
    """The API serving the quickstart's model, briefly fine-tuned (or the checkpoint WEIBO_SENTIMENT_PAGE_CKPT)."""
    checkpoint = os.environ.get("WEIBO_SENTIMENT_PAGE_CKPT") or quickstart["ckpt"]
    process, base = start_server(["--ckpt_path", checkpoint], tmp_path_factory.mktemp("page-server"),
                                 "--serve.max_texts", str(MAX_TEXTS))  # fmt: skip
    yield base
    assert stopped(process, signal.SIGTERM, timeout=60)[0] == 0


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    driver = open_browser(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


@pytest.fixture
def page(browser: webdriver.Chrome, server: str) -> webdriver.Chrome:
    """The page, freshly loaded; after the test, no request went to another origin and the console logged no error."""
    browser.get_log("performance"), browser.get_log("browser")  # drop what earlier tests left
    browser.get(f"{server}/")
    yield browser
    requested = [json.loads(entry["message"])["message"]["params"]["request"]["url"]
                 for entry in browser.get_log("performance")
                 if json.loads(entry["message"])["message"]["method"] == "Network.requestWillBeSent"]  # fmt: skip
    assert requested and all(url.startswith(server) or url.startswith(("data:", "blob:")) for url in requested), requested
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors


def analyse(browser: webdriver.Chrome, texts: list[str] | None = None, timeout: float = 120) -> list:
    if texts is not None:
        browser.execute_script("document.getElementById('posts').value = arguments[0];", "\n".join(texts))
    browser.find_element(By.ID, "analyse").click()
    WebDriverWait(browser, timeout).until(
        lambda b: b.find_element(By.ID, "analyse").is_enabled()
        and (b.find_elements(By.CSS_SELECTOR, "table#results tbody tr[data-label]")
             or b.find_element(By.ID, "error").is_displayed())
    )  # fmt: skip
    return browser.find_elements(By.CSS_SELECTOR, "table#results tbody tr[data-label]")


def api_labels(server: str, texts: list[str]) -> list[int]:
    labels = []
    for start in range(0, len(texts), MAX_TEXTS):
        status, answer = post(f"{server}/api/sentiment", {"texts": texts[start : start + MAX_TEXTS]})
        assert status == 200, answer
        labels += [result["label"] for result in answer["results"]]
    return labels


def test_pasted_posts_get_the_labels_of_the_json_api_and_a_summary(page: webdriver.Chrome, server: str) -> None:
    texts = [row["review"] for row in real_rows(24, offset=600)]
    rows = analyse(page, texts)
    assert [int(row.get_attribute("data-label")) for row in rows] == api_labels(server, texts)
    shown = [row.find_element(By.CSS_SELECTOR, "td.text .post").text for row in rows]
    assert [" ".join(text.split()) for text in shown] == [" ".join(text.split()) for text in texts]  # input order
    counts = page.find_element(By.CSS_SELECTOR, "#summary [data-positive][data-negative]")
    positive = sum(int(row.get_attribute("data-label")) == 1 for row in rows)
    assert (int(counts.get_attribute("data-positive")), int(counts.get_attribute("data-negative"))) == (positive, 24 - positive)
    assert len(page.find_elements(By.CSS_SELECTOR, "#histogram rect")) == 10
    assert not page.find_element(By.ID, "error").is_displayed()
    if os.environ.get("WEIBO_SENTIMENT_SCREENSHOT"):
        page.save_screenshot(os.environ["WEIBO_SENTIMENT_SCREENSHOT"])


def test_a_file_is_read_and_posts_without_text_keep_their_row(page: webdriver.Chrome, server: str,
                                                              tmp_path: Path) -> None:  # fmt: skip
    posts = [{"id": f"p{i}", "review": row["review"]} for i, row in enumerate(real_rows(10, offset=700))]
    posts[3]["review"] = ""
    posts[5]["review"] = 'quoted, "with" commas\nand a line break'
    path = write_csv(tmp_path / "posts.csv", posts)
    page.find_element(By.ID, "file").send_keys(str(path))
    rows = analyse(page)
    assert len(rows) == 10 and rows[3].get_attribute("data-label") == ""
    assert rows[3].find_elements(By.TAG_NAME, "td")[2].text == "empty"
    texts = [p["review"] for i, p in enumerate(posts) if i != 3]
    got = [int(row.get_attribute("data-label")) for i, row in enumerate(rows) if i != 3]
    assert got == api_labels(server, texts)


def test_a_thousand_posts_go_in_several_requests_with_progress(page: webdriver.Chrome, server: str) -> None:
    texts = [row["review"] for row in real_rows(1000, offset=1000)]
    rows = analyse(page, texts)
    assert len(rows) == 1000
    requests = page.execute_script(
        "return performance.getEntriesByType('resource').filter(e => e.name.endsWith('/api/sentiment')).length")
    assert requests == -(-1000 // MAX_TEXTS)
    assert page.find_element(By.ID, "status").text == "1000 posts labelled"
    assert [int(row.get_attribute("data-label")) for row in rows] == api_labels(server, texts)


def test_empty_input_is_an_error_on_the_page(page: webdriver.Chrome) -> None:
    analyse(page, [])
    error = page.find_element(By.ID, "error")
    assert error.is_displayed() and "Nothing to analyse" in error.text
    assert not page.find_elements(By.CSS_SELECTOR, "table#results tbody tr")


def test_a_file_of_an_unknown_kind_is_an_error_on_the_page(page: webdriver.Chrome, tmp_path: Path) -> None:
    (tmp_path / "posts.xlsx").write_bytes(b"PK\x03\x04")
    page.find_element(By.ID, "file").send_keys(str(tmp_path / "posts.xlsx"))
    analyse(page)
    assert "unknown kind of file" in page.find_element(By.ID, "error").text


def test_keyboard_alone_analyses_filters_and_sorts(page: webdriver.Chrome) -> None:
    box = page.find_element(By.ID, "posts")
    box.send_keys("好开心[哈哈]", Keys.ENTER, "太难过了[泪]", Keys.ENTER, "今天真倒霉[怒]")
    box.send_keys(Keys.CONTROL, Keys.ENTER)  # Ctrl+Enter analyses
    WebDriverWait(page, 60).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "table#results tbody tr")) == 3)
    page.find_element(By.ID, "sort").send_keys("most")  # a select is changed from the keyboard by typing
    confidences = [float(row.find_elements(By.TAG_NAME, "td")[3].text) for row in
                   page.find_elements(By.CSS_SELECTOR, "table#results tbody tr")]  # fmt: skip
    assert confidences == sorted(confidences, reverse=True)
    sentiments = [row.find_elements(By.TAG_NAME, "td")[2].text
                  for row in page.find_elements(By.CSS_SELECTOR, "table#results tbody tr")]  # fmt: skip
    page.find_element(By.ID, "filter").send_keys(sentiments[0])  # the table is drawn anew
    rows = page.find_elements(By.CSS_SELECTOR, "table#results tbody tr")
    shown = [row.find_elements(By.TAG_NAME, "td")[2].text for row in rows if row.is_displayed()]
    assert shown == [sentiments[0]] * sentiments.count(sentiments[0])


def test_the_page_asks_for_the_api_key_once_and_says_when_it_is_wrong(quickstart: dict, tmp_path: Path) -> None:
    process, base = start_server(["--ckpt_path", quickstart["ckpt"]], tmp_path / "server", "--serve.host", "0.0.0.0",
                                 env={"WEIBO_SENTIMENT_API_KEY": "right-key"})  # fmt: skip
    browser = open_browser(tmp_path / "profile")
    try:
        browser.get(f"{base}/")
        assert browser.find_element(By.ID, "api-key").is_displayed()
        browser.find_element(By.ID, "api-key").send_keys("wrong-key")
        analyse(browser, ["好开心[哈哈]"])
        assert "did not accept the API key" in browser.find_element(By.ID, "error").text
        key = browser.find_element(By.ID, "api-key")
        key.clear()
        key.send_keys("right-key")
        rows = analyse(browser, ["好开心[哈哈]", "太难过了[泪]"])
        assert len(rows) == 2 and not browser.find_element(By.ID, "error").is_displayed()
        browser.refresh()  # kept for the browser session: not asked again
        assert not browser.find_element(By.ID, "api-key").is_displayed()
        assert len(analyse(browser, ["好开心"])) == 1
    finally:
        browser.quit()
        assert stopped(process, signal.SIGTERM, timeout=60)[0] == 0


def test_a_file_with_a_time_column_gets_the_chart_of_sentiment_by_day(page: webdriver.Chrome, tmp_path: Path) -> None:
    """A MediaCrawler export (its text in "content", create_time in milliseconds): five Beijing days."""
    day = 86_400_000
    posts = [{"note_id": str(i), "content": row["review"], "create_time": str(1793491200000 + (i % 5) * day)}
             for i, row in enumerate(real_rows(20, offset=800))]  # fmt: skip
    page.find_element(By.ID, "file").send_keys(str(write_csv(tmp_path / "export.csv", posts)))
    assert len(analyse(page)) == 20
    assert page.find_element(By.ID, "trend-figure").is_displayed()
    lines = page.find_elements(By.CSS_SELECTOR, "#trend polyline")
    assert [line.get_attribute("data-days") for line in lines] == ["5", "5"]
    bars = page.find_elements(By.CSS_SELECTOR, "#trend rect.trend-posts title")
    assert [bar.get_attribute("textContent").split(":")[0] for bar in bars] == [f"2026-11-0{d}" for d in range(1, 6)]
    assert all(bar.get_attribute("textContent").split(": ")[1].startswith("4 posts") for bar in bars)
