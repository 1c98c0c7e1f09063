"""The web chat in a real browser (Playwright driving Debian's chromium, headless) against the
real server: the page asks for the API key, streams a reply, stops it, starts a new chat."""
from __future__ import annotations

import json
import time

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from serve_for_tests import running_server

CHROMIUM = "/usr/bin/chromium"  # Debian's package (apt-get install -y chromium); no `playwright install`
KEY = "web-key"


@pytest.fixture(scope="module")
def server():
    with running_server("--parallel", "1", api_key=KEY, ctx_size=1024) as s:
        yield s


@pytest.fixture()
def page(server):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 900, "height": 700})
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


def long_replies(route):
    """Make the page's chat request long enough to stop (the model would end a reply on its own)."""
    body = json.loads(route.request.post_data)
    route.continue_(post_data=json.dumps({**body, "ignore_eos": True, "max_tokens": 600}))


def reply_length(page) -> int:
    return len(page.locator(".msg.assistant").last.inner_text())


def test_chat_page_streams_stops_and_starts_over(server, page, tmp_path):
    page.on("dialog", lambda dialog: dialog.accept(KEY))  # the key prompt after the first 401
    page.route("**/v1/chat/completions", long_replies)
    page.goto(server.url + "/")
    expect(page.locator("#model")).to_have_text("smollm2-135m-instruct")

    page.click("#settings-button")
    page.fill("#system", "You are a storyteller.")
    page.fill("#temperature", "0.7")
    page.fill("#input", "Tell me a long story about a brave cat.")
    page.keyboard.press("Enter")

    expect(page.locator(".msg.user")).to_have_text("Tell me a long story about a brave cat.")
    expect(page.locator("#stop")).to_be_visible()
    page.wait_for_function("document.querySelector('.msg.assistant')?.innerText.length > 0")
    first = reply_length(page)
    page.wait_for_function(f"document.querySelector('.msg.assistant').innerText.length > {first + 20}")
    page.screenshot(path=str(tmp_path / "chat-streaming.png"))

    page.click("#stop")
    expect(page.locator("#send")).to_be_visible()
    expect(page.locator("#stop")).to_be_hidden()
    stopped = reply_length(page)
    time.sleep(0.5)
    assert reply_length(page) == stopped > first  # no more text after Stop
    slots = httpx.get(server.url + "/slots", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert not any(s["is_processing"] for s in slots)  # the server stopped generating too
    page.screenshot(path=str(tmp_path / "chat-stopped.png"))
    assert (tmp_path / "chat-streaming.png").stat().st_size > 0

    page.click("#new-chat")
    expect(page.locator(".msg")).to_have_count(0)
    expect(page.locator("#empty")).to_be_visible()
    assert page.evaluate("localStorage.getItem('llamafile.apiKey')") == KEY  # asked once, kept


def test_markdown_rendering_escapes_html_first(server, page):
    page.goto(server.url + "/")
    text = "Use **bold** and `x < y`.\n\n```python\nprint('<b>')\n```\n<script>alert(1)</script>"
    html = page.evaluate("text => markdown(text)", text)
    assert "<strong>bold</strong>" in html and "<code>x &lt; y</code>" in html
    assert "<pre><code>print('&lt;b&gt;')</code></pre>" in html
    assert "<script>" not in html and "&lt;script&gt;" in html
