"""The chat page in headless Chromium (Debian's ``chromium``, driven by Playwright):
a typed question gets a streamed answer with its notes listed, a follow-up in hint
mode carries the history, and an error is shown rather than swallowed."""

from __future__ import annotations

from pathlib import Path

import pytest
from serve_support import MOMENTUM, ScriptedEngine, build_notes_index, lively_copy

from tutorlm.generation import chat
from tutorlm.serve.api import create_app
from tutorlm.serve.config import ServeConfig
from tutorlm.serve.engine import LocalEngine, load_serving_model
from tutorlm.serve.server import BackgroundServer
from tutorlm.serve.tutor import Tutor

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
KEY = "page-key"
ANSWER = ".message.assistant"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason=f"{CHROMIUM} is absent (apt-get install chromium chromium-driver)",
    ),
]


@pytest.fixture(scope="module")
def tutor(tiny_model_dir, tmp_path_factory):
    folder = lively_copy(tiny_model_dir, tmp_path_factory.mktemp("lively"))
    model, tokenizer = load_serving_model(str(folder), device="cpu")
    engine = LocalEngine(model, tokenizer, name="tiny")
    yield Tutor(engine, index=build_notes_index(tmp_path_factory.mktemp("notes")))
    engine.close()


@pytest.fixture(scope="module")
def server(tutor):
    config = ServeConfig(default_max_tokens=12, max_prompt_tokens=400)
    with BackgroundServer(create_app(tutor, config, api_key=KEY)) as running:
        yield running


@pytest.fixture
def page(chromium_browser, server):
    # one Playwright per session (tests/conftest.py): a second sync_playwright() in the
    # same process fails while the first is running
    context = chromium_browser.new_context(
        http_credentials={"username": "student", "password": KEY}
    )
    opened = context.new_page()
    opened.set_default_timeout(60_000)
    opened.goto(server.url)
    opened.wait_for_selector("#model:text('tiny')")
    yield opened
    context.close()


def expected(tutor: Tutor, conversation: list[dict], mode: str = "tutor") -> str:
    messages = tutor.prepare(conversation, mode=mode).messages
    return chat(tutor.engine.model, tutor.engine.tokenizer, messages, max_new_tokens=12)


def ask(page, question: str, number: int):
    page.fill("#question", question)
    page.press("#question", "Enter")
    answer = page.locator(ANSWER).nth(number)
    page.wait_for_selector(f"{ANSWER}:nth-of-type({2 * number + 2})[data-state='done']")
    return answer


def test_a_question_gets_a_streamed_answer_with_its_notes(page, tutor):
    answer = ask(page, "What is momentum?", 0)
    assert answer.locator(".content").inner_text() == expected(
        tutor, [{"role": "user", "content": "What is momentum?"}]
    )
    assert int(answer.get_attribute("data-chunks")) >= 2  # shown piece by piece
    notes = answer.locator(".citations li")
    assert notes.count() == 3
    assert notes.nth(0).locator("summary").inner_text() == f"1{MOMENTUM}"
    assert answer.locator(".usage").inner_text().endswith("+ 12 answer tokens")
    assert page.locator(".message.user .content").inner_text() == "What is momentum?"


def test_a_follow_up_in_hint_mode_carries_the_history(page, tutor):
    first = ask(page, "What is momentum?", 0).locator(".content").inner_text()
    page.select_option("#mode", "hint")
    second = ask(page, "And the chain rule?", 1)
    history = [
        {"role": "user", "content": "What is momentum?"},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "And the chain rule?"},
    ]
    assert second.locator(".content").inner_text() == expected(tutor, history, mode="hint")
    page.click("#reset")
    assert page.locator(".message").count() == 0


def test_an_error_is_shown_on_the_page(page):
    page.fill("#question", "word " * 600)
    page.press("#question", "Enter")
    page.wait_for_selector(f"{ANSWER}[data-state='error']")
    status = page.locator("#status").inner_text()
    assert status.startswith("error: the prompt is") and "at most 400" in status
    assert page.locator("#send").is_enabled()


CROSS_SITE_PAGE = """<!doctype html><html><body>
<form id="attack" method="post" enctype="text/plain" action="{url}/v1/chat/completions">
<input name='{{"model": "tiny", "messages": [{{"role": "user", "content": "hi"}}], "user": "'
 value='"}}'></form>
<script>
fetch("{url}/v1/chat/completions", {{method: "POST", mode: "no-cors",
  body: JSON.stringify({{model: "tiny", messages: [{{role: "user", content: "hi"}}]}})}})
  .finally(() => document.getElementById("attack").submit());
</script></body></html>"""


def test_a_page_on_another_site_cannot_make_a_keyless_server_generate(
    chromium_browser, tiny_model_dir
):
    """A form posting ``text/plain`` and a ``no-cors`` fetch, from http://other.test."""
    from transformers import AutoTokenizer

    engine = ScriptedEngine(AutoTokenizer.from_pretrained(tiny_model_dir), ["Hi."], name="tiny")
    with BackgroundServer(create_app(Tutor(engine), ServeConfig())) as running:
        context = chromium_browser.new_context()
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.route(
            "http://other.test/",
            lambda route: route.fulfill(
                content_type="text/html", body=CROSS_SITE_PAGE.format(url=running.url)
            ),
        )
        with page.expect_navigation(url=f"{running.url}/v1/chat/completions"):
            page.goto("http://other.test/")
        answer = page.inner_text("body")
        context.close()
    assert "this API accepts only application/json" in answer
    assert engine.requests == []  # nothing was generated
