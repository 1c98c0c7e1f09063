"""The web chat in a real browser (Playwright driving Debian's chromium, headless) against the
real server on SmolLM2: one test per feature of the page (issue 16), kept short (greedy, few tokens)."""
from __future__ import annotations

import os
import json
import re
import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from serve_for_tests import running_server

CHROMIUM = "/usr/bin/chromium"  # Debian's package (apt-get install -y chromium); no `playwright install`
KEY = "web-key"
WEB = Path(__file__).resolve().parents[1] / "llamafile" / "web"
DOCS = Path(__file__).resolve().parents[1] / "docs"
FAST = {"temperature": "0", "max_tokens": "16"}  # the settings most tests start with
expect.set_options(timeout=30_000)


@pytest.fixture(scope="module")
def server():
    with running_server("--parallel", "1", api_key=KEY, ctx_size=1024) as s:
        yield s


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-background-networking"])
        try:
            yield b
        finally:
            b.close()


def open_page(browser, url: str, key: str | None = KEY, settings: dict | None = None,
              viewport=(900, 700), **options):
    """A fresh browser profile at the page; the key and settings are put in its storage before the
    first load only (a reload keeps what the page saved)."""
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]}, **options)
    seed = {"llamafile.settings": json.dumps(FAST if settings is None else settings)}
    if key:
        seed["llamafile.apiKey"] = key
    context.add_init_script(f"""if (!sessionStorage.getItem("seeded")) {{
        sessionStorage.setItem("seeded", "1");
        for (const [k, v] of Object.entries({json.dumps(seed)})) localStorage.setItem(k, v);
    }}""")
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(url + "/")
    expect(page.locator("#model")).to_have_text("smollm2-135m-instruct")
    return page


@pytest.fixture()
def page(server, browser):
    page = open_page(browser, server.url)
    yield page
    page.context.close()


def send(page, text: str) -> None:
    n = page.locator(".msg.assistant").count()
    page.fill("#input", text)
    page.keyboard.press("Enter")
    wait_reply(page, n + 1)


def wait_reply(page, n: int) -> None:
    """Until the n-th reply has finished streaming."""
    expect(page.locator(".msg.assistant")).to_have_count(n)
    expect(page.locator(".msg.assistant .typing")).to_have_count(0)
    expect(page.locator("#send")).to_be_visible()


def long_replies(route):
    """Make the page's chat request long enough to stop (the model would end a reply on its own)."""
    body = json.loads(route.request.post_data)
    route.continue_(post_data=json.dumps({**body, "ignore_eos": True, "max_tokens": 600}))


def reply_length(page) -> int:
    return len(page.locator(".msg.assistant .body").last.inner_text())


def test_page_and_its_files_are_served_offline(server, browser):
    """The page is the worktree's, its libraries and favicon come from /web/ (public, typed, nothing
    outside llamafile/web), no request leaves the server, and the console stays clean."""
    assert httpx.get(server.url + "/").text == (WEB / "index.html").read_text(encoding="utf-8")
    for path, kind in [("favicon.svg", "image/svg+xml"), ("vendor/marked.umd.js", "text/javascript"),
                       ("vendor/katex.min.css", "text/css"), ("vendor/fonts/KaTeX_Main-Regular.woff2", "font/woff2"),
                       ("vendor/marked.LICENSE", "text/plain")]:
        r = httpx.get(f"{server.url}/web/{path}")  # no API key: public like the page
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind), path
        assert r.content == (WEB / path).read_bytes()
    for path in ["..%2Fserver.py", "..%2F..%2Fpyproject.toml", "vendor", "vendor/", "nothing.js", "index.html.bak"]:
        assert httpx.get(f"{server.url}/web/{path}").status_code == 404, path
    assert httpx.get(f"{server.url}/web/../server.py").status_code == 401  # the client made it /server.py
    assert httpx.get(server.url + "/slots").status_code == 401  # the rest still needs the key
    for name in ["marked", "dompurify", "highlight.js", "katex", "marked-katex-extension"]:
        assert (WEB / "vendor" / f"{name}.LICENSE").stat().st_size > 500

    context = browser.new_context()
    context.add_init_script(f"localStorage.setItem('llamafile.apiKey', '{KEY}')")
    page = context.new_page()
    errors, outside = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: errors.append(f"failed: {r.url}"))
    page.on("request", lambda r: None if r.url.startswith(server.url) else outside.append(r.url))
    page.goto(server.url + "/")
    expect(page.locator("#model")).to_have_text("smollm2-135m-instruct")
    assert page.evaluate("[typeof marked.parse, typeof DOMPurify.sanitize, typeof hljs.highlight, "
                         "typeof katex.renderToString]") == ["function"] * 4
    icon = page.evaluate("fetch(document.querySelector('link[rel=icon]').href).then(r => r.status)")
    assert icon == 200
    page.evaluate("markdown('$x^2$')")  # the KaTeX fonts load when math is drawn
    assert not outside and not errors, (outside, errors)
    context.close()


def test_streams_stops_with_a_marker_and_asks_for_the_key(server, browser, tmp_path):
    context = browser.new_context(viewport={"width": 900, "height": 700})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.on("dialog", lambda dialog: dialog.accept(KEY))  # the key prompt after the first 401
    page.route("**/v1/chat/completions", long_replies)
    page.goto(server.url + "/")
    expect(page.locator("#model")).to_have_text("smollm2-135m-instruct")

    page.fill("#input", "Tell me a long story about a brave cat.")
    page.keyboard.press("Enter")
    expect(page.locator(".msg.user .body")).to_have_text("Tell me a long story about a brave cat.")
    expect(page.locator("#stop")).to_be_visible()
    page.wait_for_function("document.querySelector('.msg.assistant .body')?.innerText.length > 0")
    first = reply_length(page)
    page.wait_for_function(f"document.querySelector('.msg.assistant .body').innerText.length > {first + 20}")

    page.click("#stop")
    expect(page.locator("#send")).to_be_visible()
    expect(page.locator("#stop")).to_be_hidden()
    expect(page.locator(".msg.assistant .stopped")).to_have_text("■ stopped")
    stopped = reply_length(page)
    time.sleep(0.5)
    assert reply_length(page) == stopped > first  # no more text after Stop
    slots = httpx.get(server.url + "/slots", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert not any(s["is_processing"] for s in slots)  # the server stopped generating too
    assert page.evaluate("localStorage.getItem('llamafile.apiKey')") == KEY  # asked once, kept

    page.reload()  # the marker is kept with the conversation
    expect(page.locator(".msg.assistant .stopped")).to_have_text("■ stopped")
    context.close()


def test_keyboard_enter_shift_enter_escape(server, page):
    page.route("**/v1/chat/completions", long_replies)
    page.click("#input")
    page.keyboard.type("line one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("line two")
    assert page.input_value("#input") == "line one\nline two"
    expect(page.locator(".msg")).to_have_count(0)  # Shift+Enter did not send
    page.keyboard.press("Enter")
    expect(page.locator(".msg.user .body")).to_have_text("line one\nline two")
    page.wait_for_function("document.querySelector('.msg.assistant .body')?.innerText.length > 10")
    page.keyboard.press("Escape")
    expect(page.locator(".msg.assistant .stopped")).to_be_visible()
    expect(page.locator("#send")).to_be_visible()
    assert page.input_value("#input") == ""


def test_markdown_lists_headings_links_tables_code_math_sanitised(page):
    text = ("# Title\n\n## Part\n\n- one\n- two\n\n1. first\n2. second\n\n"
            "A [link](https://example.com) and **bold** and `x < y`.\n\n"
            "| a | b |\n|---|---|\n| 1 | 2 |\n\n"
            "```python\ndef f(x):\n    return x + 1\n```\nAfter the code.\n\n"
            "Inline $e^{i\\pi} + 1 = 0$ and a display:\n\n$$\\int_0^1 x\\,dx$$\n\nand \\(a^2\\) too.\n\n"
            "<script>alert(1)</script>\n\n<img src=x onerror=alert(2)>\n\n[bad](javascript:alert(3))")
    html = page.evaluate("text => markdown(text)", text)
    page.evaluate("html => { const d = document.createElement('div'); d.id = 'probe'; d.innerHTML = html; "
                  "document.body.appendChild(d); }", html)
    probe = page.locator("#probe")
    expect(probe.locator("h1")).to_have_text("Title")
    expect(probe.locator("h2")).to_have_text("Part")
    expect(probe.locator("ul > li")).to_have_text(["one", "two"])
    expect(probe.locator("ol > li")).to_have_text(["first", "second"])
    link = probe.locator("a", has_text="link")
    assert link.get_attribute("href") == "https://example.com" and link.get_attribute("target") == "_blank"
    assert "noopener" in link.get_attribute("rel")
    expect(probe.locator("table th")).to_have_text(["a", "b"])
    expect(probe.locator("table td")).to_have_text(["1", "2"])
    expect(probe.locator("code", has_text="x < y")).to_have_count(1)
    code = probe.locator("pre code.language-python")
    expect(code.locator(".hljs-keyword")).to_have_text(["def", "return"])  # highlighted
    expect(probe.locator(".katex")).to_have_count(3)
    expect(probe.locator(".katex-display")).to_have_count(1)
    # no stray <br> after a code block: the paragraph follows the <pre> directly
    assert re.search(r"</pre>\s*<p>After the code\.</p>", html), html
    assert "<br" not in html.split("</pre>")[1].split("</p>")[0]
    # what the model writes is sanitised: raw HTML is shown as text, never run
    assert "<script" not in html and "onerror" not in html.replace("onerror=alert(2)&gt;", "")
    expect(probe.locator("img")).to_have_count(0)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "javascript:" not in (probe.locator("a", has_text="bad").get_attribute("href") or "")


def test_replies_are_rendered_as_markdown(server, page):
    page.route("**/v1/chat/completions", canned_reply("Two items:\n\n- **alpha**\n- beta\n"))
    send(page, "List two items.")
    body = page.locator(".msg.assistant .body").last
    expect(body.locator("li")).to_have_text(["alpha", "beta"])
    expect(body.locator("strong")).to_have_text("alpha")


def test_conversations_persist_new_rename_delete(server, page):
    page.on("dialog", lambda d: d.accept())  # the delete confirmation
    send(page, "Say hello.")
    expect(page.locator(".conv")).to_have_count(1)
    expect(page.locator(".conv .title")).to_have_text("Say hello.")
    reply = page.locator(".msg.assistant .body").inner_text()

    page.click("#new-chat")
    expect(page.locator(".msg")).to_have_count(0)
    send(page, "What is 2 + 2?")
    expect(page.locator(".conv .title")).to_have_text(["What is 2 + 2?", "Say hello."])

    page.reload()  # both survive a reload, the open one stays open
    expect(page.locator("#model")).to_have_text("smollm2-135m-instruct")
    expect(page.locator(".conv .title")).to_have_text(["What is 2 + 2?", "Say hello."])
    expect(page.locator(".conv.active .title")).to_have_text("What is 2 + 2?")
    page.locator(".conv .title", has_text="Say hello.").click()
    expect(page.locator(".msg.user .body")).to_have_text("Say hello.")
    expect(page.locator(".msg.assistant .body")).to_have_text(reply)

    page.locator(".conv.active button[title=Rename]").click()
    page.fill(".conv input", "Greetings")
    page.keyboard.press("Enter")
    expect(page.locator(".conv.active .title")).to_have_text("Greetings")
    page.reload()  # renaming does not reorder the list (newest first)
    expect(page.locator(".conv .title")).to_have_text(["What is 2 + 2?", "Greetings"])

    page.locator(".conv", has_text="Greetings").locator("button[title=Delete]").click()
    expect(page.locator(".conv .title")).to_have_text(["What is 2 + 2?"])
    page.reload()
    expect(page.locator(".conv .title")).to_have_text(["What is 2 + 2?"])


def test_every_sampling_setting_is_sent_and_kept(server, page):
    fields = {"max_tokens": "8", "temperature": "0.5", "top_k": "20", "top_p": "0.9", "min_p": "0.1",
              "repeat_penalty": "1.1", "repeat_last_n": "32", "presence_penalty": "0.2",
              "frequency_penalty": "0.3", "seed": "42"}
    page.click("#settings-button")
    page.fill("#system", "You answer in one word.")
    for name, value in fields.items():
        page.fill(f"#{name}", value)
    bodies = []
    page.on("request", lambda r: bodies.append(json.loads(r.post_data))
            if r.url.endswith("/v1/chat/completions") else None)
    send(page, "Hi")
    body = bodies[-1]
    assert body["messages"][0] == {"role": "system", "content": "You answer in one word."}
    for name, value in fields.items():
        assert body[name] == (float(value) if "." in value else int(value)), name
    usage_tokens = page.locator(".msg.assistant .speed").inner_text()
    assert re.search(r"generation [1-8] tok", usage_tokens)  # max_tokens took effect

    page.reload()  # kept per browser
    for name, value in fields.items():
        assert page.input_value(f"#{name}") == value, name
    assert page.input_value("#system") == "You answer in one word."
    page.click("#settings-button")
    page.click("#reset-settings")
    assert page.input_value("#temperature") == "" and page.input_value("#system") == ""
    page.fill("#max_tokens", "4")
    bodies.clear()
    send(page, "Hi again")
    assert "temperature" not in bodies[-1] and bodies[-1]["max_tokens"] == 4  # empty = the server's default


def test_copy_regenerate_edit_and_resend(server, browser):
    page = open_page(browser, server.url, permissions=["clipboard-read", "clipboard-write"])
    send(page, "Name a colour.")
    first = page.locator(".msg.assistant .body").inner_text()
    assert first

    page.locator(".msg.assistant button[title=Copy]").click()
    expect(page.locator(".msg.assistant button[title=Copy]")).to_have_text("Copied")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.strip() == first.strip()

    page.locator(".msg.assistant button[title=Regenerate]").click()
    wait_reply(page, 1)
    expect(page.locator(".msg")).to_have_count(2)  # replaced, not added
    assert page.locator(".msg.assistant .body").inner_text() == first  # greedy: the same reply again

    page.locator(".msg.user button[title='Edit and resend']").click()
    page.fill(".msg.user textarea", "Name an animal.")
    page.keyboard.press("Enter")
    wait_reply(page, 1)
    expect(page.locator(".msg")).to_have_count(2)
    expect(page.locator(".msg.user .body")).to_have_text("Name an animal.")
    page.reload()
    expect(page.locator(".msg.user .body")).to_have_text("Name an animal.")
    page.context.close()


def test_each_reply_shows_its_speed(server, page):
    send(page, "Say hi.")
    speed = page.locator(".msg.assistant .speed").inner_text()
    m = re.fullmatch(r"prompt (\d+) tok, ([\d.]+) tok/s · generation (\d+) tok, ([\d.]+) tok/s", speed)
    assert m, speed
    assert int(m[1]) > 5 and float(m[2]) > 0 and 1 <= int(m[3]) <= 16 and float(m[4]) > 0
    # the chat stream carries llama.cpp's `timings`: the server's own figures, and the tooltip says so
    assert "server" in page.locator(".msg.assistant .speed").get_attribute("title")


def test_a_full_context_drops_the_oldest_turns(browser):
    long = "Here is some text about the sea and ships and sailors. " * 14  # about 170 tokens
    with running_server("--parallel", "1", ctx_size=256) as small:
        page = open_page(browser, small.url, key=None, settings={"temperature": "0", "max_tokens": "48"})
        send(page, long + "Summarise it.")
        assert page.locator(".msg.error").count() == 0
        send(page, "Now say hello.")  # the first turn no longer fits: dropped, and said so
        expect(page.locator(".msg.error")).to_have_count(0)
        expect(page.locator(".msg.assistant .note").last).to_contain_text("context full")
        assert page.locator(".msg.assistant .body").last.inner_text().strip()
        send(page, "And goodbye.")  # and it keeps working
        expect(page.locator(".msg.error")).to_have_count(0)
        assert page.locator(".msg.assistant .body").last.inner_text().strip()

        page.click("#new-chat")  # a message longer than the context: one error, then the chat goes on
        send(page, long * 2)
        expect(page.locator(".msg.error .body")).to_contain_text("too long for the context (256 tokens)")
        send(page, "Hello?")
        expect(page.locator(".msg.error")).to_have_count(1)
        assert page.locator(".msg.assistant .body").last.inner_text().strip()
        page.context.close()


def test_phone_sized_window(server, browser):
    page = open_page(browser, server.url, viewport=(375, 667), is_mobile=True, has_touch=True)
    send(page, "Write a line of Python.")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, width  # nothing wider than the screen
    expect(page.locator("#sidebar")).not_to_be_in_viewport()
    for sel in ["#input", "#send", "#settings-button", "#menu"]:
        box = page.locator(sel).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 375, sel
    page.click("#menu")
    expect(page.locator("#sidebar")).to_be_in_viewport()
    page.locator(".conv .title").first.click()
    expect(page.locator("#sidebar")).not_to_be_in_viewport()
    page.context.close()


SCREENSHOT_REPLY = """Here is a plan:

1. **Read** the file
2. Count the words
3. Print the *top three*

| word | count |
|------|------:|
| the  | 42 |
| sea  | 17 |
| ship | 9 |

```python
from collections import Counter

def top_words(path, n=3):
    with open(path) as f:
        return Counter(f.read().split()).most_common(n)
```

The frequency of a word is $f = \\frac{n_w}{N}$."""


def canned_reply(text: str):
    """A chat stream with this text (what the model says is not under test here, only the page)."""
    def handle(route):
        chunks = [text[i:i + 12] for i in range(0, len(text), 12)]
        events = [{"choices": [{"index": 0, "delta": {"content": c}, "finish_reason": None}]} for c in chunks]
        events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        events.append({"choices": [], "usage": {"prompt_tokens": 31, "completion_tokens": 120, "total_tokens": 151},
                       "timings": {"prompt_n": 31, "prompt_per_second": 1432.0, "predicted_n": 120,
                                   "predicted_per_second": 208.4}})
        body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body)
    return handle


def test_screenshot_of_a_conversation(server, browser, tmp_path):
    """docs/webui.png: a conversation with a list, a table, highlighted code and math. The first
    reply is SmolLM2's own; the second is a canned stream (a 135M model seldom writes a table)."""
    page = open_page(browser, server.url, viewport=(1100, 860), color_scheme="light")
    send(page, "What is the capital of France?")
    page.route("**/v1/chat/completions", canned_reply(SCREENSHOT_REPLY))
    send(page, "How do I find the three most common words in a file?")
    body = page.locator(".msg.assistant .body").last
    expect(body.locator("ol > li")).to_have_count(3)
    expect(body.locator("table tr")).to_have_count(4)
    expect(body.locator(".hljs-keyword").first).to_be_visible()
    expect(body.locator(".katex")).to_have_count(1)
    expect(page.locator(".msg.assistant .speed").last).to_contain_text("1432 tok/s")  # the server's timings win
    page.evaluate("document.fonts.ready")
    DOCS.mkdir(exist_ok=True)
    # the README's picture is refreshed only when asked (LLAMAFILE_SCREENSHOT=1); tests leave the checkout as it was
    shot = DOCS / "webui.png" if os.environ.get("LLAMAFILE_SCREENSHOT") == "1" else tmp_path / "webui.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 20_000
    page.context.close()
