"""The terminal chat: streamed answers with history, /reset, /sources, /mode, /hint and
/tutor, history trimming, and the real ``tutorlm chat`` command driven through its stdin."""

from __future__ import annotations

import io
import sys

import pytest
from serve_support import MOMENTUM, ScriptedEngine, build_notes_index, lively_copy

from tutorlm.generation import chat
from tutorlm.layout import tutor_commands
from tutorlm.serve.chat import HELP, Ask, ChatSession, run_chat
from tutorlm.serve.commands import served_name
from tutorlm.serve.engine import LocalEngine
from tutorlm.serve.loading import load_serving_model
from tutorlm.serve.tutor import MODE_PROMPTS, Tutor


@pytest.fixture(scope="module")
def lively_dir(tiny_model_dir, tmp_path_factory):
    return lively_copy(tiny_model_dir, tmp_path_factory.mktemp("lively"))


@pytest.fixture(scope="module")
def notes_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("notes")
    build_notes_index(folder)
    return folder


@pytest.fixture(scope="module")
def tutor(lively_dir, notes_dir):
    from serve_support import KeywordEmbedder

    from tutorlm.rag import load_index

    model, tokenizer = load_serving_model(str(lively_dir), device="cpu")
    engine = LocalEngine(model, tokenizer, name="lively")
    yield Tutor(engine, index=load_index(notes_dir / "index", embedder=KeywordEmbedder()))
    engine.close()


def talk(session: ChatSession, lines: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    status = run_chat(session, io.StringIO("".join(f"{line}\n" for line in lines)), out)
    return status, out.getvalue()


def direct(tutor: Tutor, conversation: list[dict], mode: str, max_tokens: int) -> str:
    prepared = tutor.prepare(conversation, mode=mode)
    return chat(
        tutor.engine.model, tutor.engine.tokenizer, prepared.messages, max_new_tokens=max_tokens
    )


def test_a_conversation_with_commands(tutor):
    session = ChatSession(tutor, mode="tutor", max_tokens=6)
    first = direct(tutor, [{"role": "user", "content": "What is momentum?"}], "tutor", 6)
    history = [
        {"role": "user", "content": "What is momentum?"},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "And the chain rule?"},
    ]
    second = direct(tutor, history, "hint", 6)
    status, transcript = talk(
        session,
        [
            "What is momentum?",
            "/sources",
            "/mode lecture",
            "/mode hint",
            "/mode",
            "And the chain rule?",
            "/help",
            "/frobnicate",
            "/reset",
            "/sources",
            "/quit",
            "never read",
        ],
    )
    assert status == 0
    assert transcript.startswith("tutorlm chat: lively, notes: 4 chunks, mode tutor.")
    assert f"you> What is momentum?\ntutor> {first}\n(notes given: [1] {MOMENTUM}; " in transcript
    assert f"[1] {MOMENTUM} (given)\n    ## Momentum Momentum is mass times velocity" in transcript
    assert (
        "(unknown mode 'lecture': use tutor or hint)\nyou> (mode: hint)\nyou> (mode: hint)\n"
        in transcript
    )
    assert f"you> And the chain rule?\ntutor> {second}\n" in transcript
    assert HELP in transcript
    assert "(unknown command /frobnicate; /help lists them)" in transcript
    assert "(conversation cleared)\nyou> (no notes were used yet)\nyou> " in transcript
    assert "never read" not in transcript
    assert session.history == [] and session.mode == "hint"


def test_hint_and_tutor_switch_the_mode_or_ask_one_question(tutor):
    session = ChatSession(tutor, mode="tutor", max_tokens=6)
    first = [{"role": "user", "content": "What is momentum?"}]
    hinted = direct(tutor, first, "hint", 6)
    assert hinted != direct(tutor, first, "tutor", 6)  # so the mode used is visible
    follow_up = [*first, {"role": "assistant", "content": hinted}]
    follow_up.append({"role": "user", "content": "And energy?"})
    tutored = direct(tutor, follow_up, "tutor", 6)
    status, transcript = talk(
        session,
        ["/hint What is momentum?", "/mode", "And energy?", "/hint", "/mode", "/tutor", "/mode"],
    )
    assert status == 0
    assert f"you> /hint What is momentum?\ntutor> {hinted}\n(notes given: [1] {MOMENTUM}; " in (
        transcript
    )
    assert f"you> (mode: tutor)\nyou> And energy?\ntutor> {tutored}\n" in transcript
    assert transcript.endswith(
        "you> (mode: hint)\nyou> (mode: hint)\nyou> (mode: tutor)\nyou> (mode: tutor)\nyou> \n"
    )
    assert [m["content"] for m in session.history] == [
        "What is momentum?",
        hinted,
        "And energy?",
        tutored,
    ]
    assert session.command("/tutor   Why?  ") == Ask("Why?", "tutor")
    assert session.command("/hint Why is p = m v?") == Ask("Why is p = m v?", "hint")
    assert session.mode == "tutor"
    assert "/hint QUESTION       ask this one question in hint mode" in HELP


def test_sources_show_file_heading_and_passage(tutor):
    engine = ScriptedEngine(tutor.engine.tokenizer, ["Mass times ", "velocity [1]."])
    session = ChatSession(Tutor(engine, index=tutor.index), mode="tutor")
    status, transcript = talk(
        session, ["What is momentum?", "/sources", "/sources 2", "/sources 4"]
    )
    assert status == 0
    assert transcript.partition("you> What is momentum?\n")[2] == (
        "tutor> Mass times velocity [1].\n"
        f"(cited: [1] {MOMENTUM})\n"
        f"you> [1] {MOMENTUM} (cited)\n"
        "    ## Momentum Momentum is mass times velocity, p = m v. It is conserved when no\n"
        "    external force acts on a system.\n"
        "[2] notes/physics.md, Mechanics > Energy (given)\n"
        "    ## Energy Kinetic energy is one half of mass times velocity squared.\n"
        "[3] notes/calculus.md, Calculus > Derivatives (given)\n"
        "    ## Derivatives The derivative measures the rate of change of a function. The chain\n"
        "    rule differentiates a composition: (f(g(x)))' = f'(g(x)) g'(x).\n"
        "you> [2] notes/physics.md, Mechanics > Energy (given)\n"
        "    ## Energy Kinetic energy is one half of mass times velocity squared.\n"
        "you> (no note '4': the last answer was given notes 1-3)\n"
        "you> \n"
    )


def test_a_long_passage_is_shortened_in_the_list_and_whole_when_asked_for(tutor):
    from tutorlm.rag.records import Chunk, Hit

    words = " ".join(f"word{i}" for i in range(40))  # 309 characters
    note = Chunk.make("notes/long.pdf", 0, words, 7, "Long > Longer")
    session = ChatSession(tutor, mode="tutor", last_sources=[Hit(note, 0.5)], last_answer="[1]")
    listed = session.describe_sources()
    assert listed.startswith("[1] notes/long.pdf, p. 7, Long > Longer (cited)\n    word0 word1 ")
    assert listed.endswith(" word27 word28 …")  # 200 characters at most
    assert len(listed.splitlines()) == 4
    whole = session.describe_sources("1")
    assert whole.replace("\n    ", " ").endswith(" word38 word39")
    assert len(whole.splitlines()) == 5 and max(len(line) for line in whole.splitlines()) <= 88


def test_hint_mode_changes_the_system_prompt(tutor):
    tutoring = tutor.prepare([{"role": "user", "content": "What is 2 + 2?"}], mode="tutor")
    hinting = tutor.prepare([{"role": "user", "content": "What is 2 + 2?"}], mode="hint")
    assert tutoring.messages[0]["content"].startswith(MODE_PROMPTS["tutor"])
    assert hinting.messages[0]["content"].startswith(MODE_PROMPTS["hint"])
    assert "Never give the final answer" in hinting.messages[0]["content"]


def test_old_turns_are_dropped_when_the_prompt_grows_too_long(tutor):
    session = ChatSession(tutor, mode="tutor", max_tokens=4, max_prompt_tokens=320)
    status, transcript = talk(
        session, ["What is momentum? " * 8, "What is energy? " * 8, "And ATP?"]
    )
    assert status == 0
    assert "(the 2 oldest turns no longer fit and were dropped)" in transcript
    assert (
        "(the 2 oldest turns no longer fit and were dropped)" in transcript.partition("And ATP?")[0]
    )
    assert [m["role"] for m in session.history] == ["user", "assistant", "user", "assistant"]
    assert session.history[0]["content"].startswith("What is energy?")
    assert session.history[-2]["content"] == "And ATP?"


def test_end_of_input_ends_the_chat_and_the_chat_without_notes_says_so(tutor):
    bare = Tutor(tutor.engine)
    status, transcript = talk(ChatSession(bare, mode="tutor", max_tokens=3), ["hi", "/sources"])
    assert status == 0 and "no notes, mode tutor" in transcript
    assert "(no notes: start the chat with --rag DIR to cite course notes)" in transcript
    assert transcript.endswith("you> \n")


def test_commands_for_a_model_and_its_served_name(tmp_path):
    commands = tutor_commands(tmp_path / "m 2", tmp_path / "index")
    assert commands == {
        "chat": f"tutorlm chat --model '{tmp_path}/m 2' --rag {tmp_path}/index",
        "serve": f"tutorlm serve --model '{tmp_path}/m 2' --rag {tmp_path}/index",
    }
    assert (
        tutor_commands("runs/demo/dpo/merged")["serve"]
        == "tutorlm serve --model runs/demo/dpo/merged"
    )
    assert served_name("bundled:smollm2-135m-instruct") == "smollm2-135m-instruct"
    assert served_name("Qwen/Qwen1.5-0.5B-Chat") == "Qwen/Qwen1.5-0.5B-Chat"
    assert served_name(str(tmp_path)) == tmp_path.name


def test_the_chat_command_reads_its_stdin(lively_dir, notes_dir, monkeypatch, capsys):
    from tutorlm.cli import main

    command = tutor_commands(lively_dir, notes_dir / "index")["chat"].split()
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is momentum?\n/sources\n/mode hint\n"))
    status = main([*command[1:], "--search-mode", "bm25", "--max-tokens", "5"])
    transcript = capsys.readouterr().out
    assert status == 0
    assert f"tutorlm chat: {lively_dir.name}, notes: 4 chunks, mode tutor." in transcript
    assert "you> What is momentum?\ntutor> " in transcript
    assert f"[1] {MOMENTUM} (given)" in transcript
    assert transcript.endswith("(mode: hint)\nyou> \n")


def parse(configure, argv: list[str]):
    import argparse

    parser = argparse.ArgumentParser()
    configure(parser)
    return parser.parse_args(argv)


def test_settings_come_from_flags_over_the_recipe_over_defaults(tmp_path):
    from tutorlm.errors import TutorlmError
    from tutorlm.serve.commands import _configure_chat, _configure_serve, resolve_settings

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: r\nrun_root: {tmp_path}/runs\nrag: {{k: 2, mode: bm25}}\n"
        "serve: {max_batch: 3, mode: hint, port: 9000}\n"
    )
    (tmp_path / "runs/r/sft/merged").mkdir(parents=True)
    (tmp_path / "runs/r/sft/merged/config.json").write_text("{}")
    (tmp_path / "runs/r/rag/index").mkdir(parents=True)
    from_recipe = resolve_settings(parse(_configure_serve, ["--recipe", str(recipe)]))
    assert from_recipe.model == f"{tmp_path}/runs/r/sft/merged"  # M1: there is no M2 yet
    assert from_recipe.rag_dir == f"{tmp_path}/runs/r/rag/index"
    assert (from_recipe.k, from_recipe.search_mode) == (2, "bm25")
    assert (from_recipe.config.max_batch, from_recipe.config.mode) == (3, "hint")
    assert from_recipe.config.port == 9000 and from_recipe.config.host == "127.0.0.1"

    flags = ["--recipe", str(recipe), "--model", "m", "--k", "4", "--max-batch", "1"]
    overridden = resolve_settings(parse(_configure_serve, [*flags, "--mode", "tutor"]))
    assert (overridden.model, overridden.k, overridden.config.max_batch) == ("m", 4, 1)
    assert overridden.config.mode == "tutor" and overridden.config.port == 9000

    defaults = resolve_settings(parse(_configure_serve, []))
    assert defaults.model == "bundled:smollm2-135m-instruct" and defaults.rag_dir is None
    assert (defaults.k, defaults.search_mode, defaults.budget_tokens) == (3, "hybrid", 768)
    with pytest.raises(TutorlmError, match="port: Input should be less than or equal to 65535"):
        resolve_settings(parse(_configure_serve, ["--port", "70000"]))
    capped = resolve_settings(parse(_configure_serve, ["--max-tokens-limit", "64"]))
    assert (capped.config.default_max_tokens, capped.config.max_tokens_limit) == (64, 64)
    with pytest.raises(TutorlmError, match=r"^bad serve settings: default_max_tokens \(2000\) is"):
        resolve_settings(parse(_configure_chat, ["--max-tokens", "2000"]))


def test_serve_refuses_an_open_address_without_a_key(capsys):
    from tutorlm.cli import main

    assert main(["serve", "--host", "0.0.0.0"]) == 1
    assert "--host 0.0.0.0 accepts connections from other machines: set --api-key" in (
        capsys.readouterr().err
    )
