"""The chat page in headless Chromium (Debian's ``chromium``, driven by Playwright):
a typed question gets a streamed answer with its notes listed, a follow-up in hint
mode carries the history, the mode is chosen per message, the notes open to their
passage, the model's served name heads the page, and an error is shown rather than
swallowed."""

from __future__ import annotations

from pathlib import Path

import pytest
from serve_support import (
    MOMENTUM,
    RecordingTutor,
    ScriptedEngine,
    build_notes_index,
    lively_copy,
)

from tutorlm.generation import chat
from tutorlm.serve.api import create_app
from tutorlm.serve.config import ServeConfig
from tutorlm.serve.engine import LocalEngine
from tutorlm.serve.loading import load_serving_model
from tutorlm.serve.server import BackgroundServer
from tutorlm.serve.tutor import MODE_PROMPTS, Tutor

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
def notes_index(tmp_path_factory):
    return build_notes_index(tmp_path_factory.mktemp("notes"))


@pytest.fixture(scope="module")
def tutor(tiny_model_dir, tmp_path_factory, notes_index):
    folder = lively_copy(tiny_model_dir, tmp_path_factory.mktemp("lively"))
    model, tokenizer = load_serving_model(str(folder), device="cpu")
    engine = LocalEngine(model, tokenizer, name="tiny")
    yield Tutor(engine, index=notes_index)
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
    notes = answer.locator(".sources li.source")
    assert notes.count() == 3
    assert notes.nth(0).locator("summary").inner_text() == ("[1] " + MOMENTUM.replace(", ", " › "))
    assert answer.locator(".usage").inner_text().endswith("+ 12 answer tokens")
    assert page.locator(".message.user .content").inner_text() == "What is momentum?"


def test_a_follow_up_in_hint_mode_carries_the_history(page, tutor):
    first = ask(page, "What is momentum?", 0).locator(".content").inner_text()
    page.check("#mode-hint")
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


SCRIPTED_ANSWER = ["<b>Momentum</b> is ", "p = m v [1]."]


@pytest.fixture(scope="module")
def scripted(tiny_model_dir, notes_index):
    """A tutor that says ``SCRIPTED_ANSWER``, starts in hint mode, serves as ``demo-M2``
    and records the mode of each request it receives."""
    from transformers import AutoTokenizer

    engine = ScriptedEngine(
        AutoTokenizer.from_pretrained(tiny_model_dir), SCRIPTED_ANSWER, name="demo-M2"
    )
    scripted_tutor = RecordingTutor(engine, index=notes_index, mode="hint")
    with BackgroundServer(create_app(scripted_tutor, ServeConfig())) as running:
        yield scripted_tutor, running


@pytest.fixture
def scripted_page(chromium_browser, scripted):
    scripted_tutor, running = scripted
    scripted_tutor.modes.clear()
    scripted_tutor.engine.requests.clear()
    context = chromium_browser.new_context()
    opened = context.new_page()
    opened.set_default_timeout(30_000)
    opened.goto(running.url)
    opened.wait_for_selector("#model:text('demo-M2')")
    yield opened, scripted_tutor
    context.close()


def test_the_mode_is_chosen_per_message_and_stays_chosen(scripted_page):
    page, scripted_tutor = scripted_page
    assert page.title() == "tutorlm · demo-M2"
    assert page.is_checked("#mode-hint")  # the server's default mode
    ask(page, "What is momentum?", 0)
    page.focus("#mode-hint")
    page.keyboard.press("ArrowLeft")  # the radio group, by keyboard
    assert page.is_checked("#mode-tutor") and not page.is_checked("#mode-hint")
    ask(page, "And energy?", 1)
    ask(page, "And the chain rule?", 2)  # the choice holds for the next message
    assert scripted_tutor.modes == ["hint", "tutor", "tutor"]
    systems = [request.messages[0]["content"] for request in scripted_tutor.engine.requests]
    assert [s.startswith(MODE_PROMPTS["hint"]) for s in systems] == [True, False, False]
    assert [s.startswith(MODE_PROMPTS["tutor"]) for s in systems] == [False, True, True]
    badges = page.locator(".message.user .mode-badge").all_inner_texts()
    assert badges == ["hint", "tutor", "tutor"]
    modes = [box.get_attribute("data-mode") for box in page.locator(ANSWER).all()]
    assert modes == ["hint", "tutor", "tutor"]  # as the server answered them


def test_the_sources_open_to_their_passage(scripted_page):
    page, _ = scripted_page
    answer = ask(page, "What is momentum?", 0)
    assert answer.locator(".content").inner_text() == "<b>Momentum</b> is p = m v [1]."
    assert answer.locator(".content b").count() == 0  # model text is never HTML
    cited = answer.locator(".source-group.cited")
    given = answer.locator(".source-group.given")
    assert cited.locator(".source-label").inner_text() == "sources cited"
    assert cited.locator("summary").all_inner_texts() == [
        "[1] notes/physics.md › Mechanics > Momentum cited"
    ]
    assert given.locator(".source-label").inner_text() == "also given, not cited"
    assert given.locator("summary").all_inner_texts() == [
        "[2] notes/physics.md › Mechanics > Energy",
        "[3] notes/calculus.md › Calculus > Derivatives",
    ]
    passage = cited.locator(".passage")
    assert not passage.is_visible()
    cited.locator("summary").focus()
    page.keyboard.press("Enter")
    assert passage.is_visible()
    assert passage.inner_text() == (
        "## Momentum\n\nMomentum is mass times velocity, p = m v. "
        "It is conserved when no external force acts on a system."
    )
    assert not given.locator(".passage").first.is_visible()


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


# -- the quiz tab ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quiz_server(tiny_model_dir, tmp_path_factory):
    """A server whose page has a quiz tab: 20 questions built from the bundled notes
    (keyword vectors, BM25 check), results kept in a SQLite file."""
    from rag_support import KeywordEmbedder as Keywords
    from transformers import AutoTokenizer

    from tutorlm.quiz.build import build_quiz
    from tutorlm.quiz.records import read_quiz
    from tutorlm.rag import build_index
    from tutorlm.rag.config import IndexSettings
    from tutorlm.serve.routes import attach_quiz

    folder = tmp_path_factory.mktemp("quiz-page")
    build_index(["bundled:notes"], folder / "index", settings=IndexSettings(), embedder=Keywords())
    build_quiz(folder / "index", folder / "quiz.jsonl", count=20, mode="bm25",
               embedder=Keywords(), log=lambda _: None)  # fmt: skip
    questions = read_quiz(folder / "quiz.jsonl")
    engine = ScriptedEngine(AutoTokenizer.from_pretrained(tiny_model_dir), ["Hi."], name="tiny")
    app = create_app(Tutor(engine), ServeConfig())
    attach_quiz(app, questions, "quiz.jsonl", folder / "results.sqlite")
    with BackgroundServer(app) as running:
        yield running, questions, folder / "results.sqlite"


def test_a_quiz_of_20_questions_is_taken_end_to_end(chromium_browser, quiz_server):
    """Answer (15 right, 5 wrong), grade, explanation with its source, final score,
    sections to re-read, and the attempt saved for the student."""
    from tutorlm.quiz.store import attempts

    running, questions, results = quiz_server
    assert len(questions) == 20 and {q.kind for q in questions} == {"mcqa", "short", "numeric"}
    context = chromium_browser.new_context()
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(running.url)
    page.wait_for_selector("#tabs:not([hidden])")
    page.click("#tab-quiz")
    assert not page.is_visible("#conversation") and page.is_visible("#quiz")
    page.fill("#quiz-student", "ada")
    page.click("#quiz-start")
    for number, question in enumerate(questions):
        right = number < 15
        assert page.inner_text("#quiz-question") == question.question
        assert page.inner_text("#quiz-progress").startswith(f"Question {number + 1} of 20")
        if question.kind == "mcqa":
            assert page.locator("#quiz-choices .choice").all_inner_texts() == question.choices
            pick = question.answer if right else (question.answer + 1) % 4
            page.locator('input[name="quiz-choice"]').nth(pick).check()
        else:
            page.fill("#quiz-answer", question.answer_text if right else "no idea")
        page.click("#quiz-submit")
        page.wait_for_selector("#quiz-card[data-state='graded']")
        verdict = page.inner_text("#quiz-feedback .verdict")
        assert verdict == "Right." if right else verdict.startswith("Not quite: the answer is")
        assert page.inner_text("#quiz-feedback .explanation") == question.explanation
        assert page.inner_text("#quiz-feedback .source").startswith(f"source: {question.file} ›")
        page.click("#quiz-next")
    page.wait_for_selector("#quiz-result:not([hidden])")
    assert page.inner_text("#quiz-score") == "Score: 15 / 20"
    missed = []
    for question in questions[15:]:
        where = f"Re-read {question.file} › {question.heading.replace(' > ', ' › ')}"
        if where not in missed:
            missed.append(where)
    assert page.locator("#quiz-reread li").all_inner_texts() == missed
    assert page.inner_text("#quiz-saved") == "saved for ada"
    context.close()
    saved = attempts(results, "ada")
    assert [(a["score"], a["total"]) for a in saved] == [(15, 20)]
