"""The served model's name: ``<recipe>-M2`` for a run's model, a directory's meaningful
name otherwise, ``--served-name`` / ``serve.served_name`` over both; and that name in
``/v1/models``, ``/health`` and the ``model`` of every reply, whole or streamed."""

from __future__ import annotations

import argparse
import json

import httpx
import pytest
from serve_support import ScriptedEngine

from tutorlm.serve.api import create_app
from tutorlm.serve.commands import _configure_chat, _configure_serve, resolve_settings, served_name
from tutorlm.serve.server import BackgroundServer
from tutorlm.serve.tutor import Tutor

QUESTION = [{"role": "user", "content": "What is momentum?"}]


def model_dir(path):
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def settings(*argv: str, configure=_configure_serve):
    parser = argparse.ArgumentParser()
    configure(parser)
    return resolve_settings(parser.parse_args(list(argv)))


def test_a_model_is_named_by_its_run_or_its_meaningful_directory(tmp_path):
    assert served_name(str(model_dir(tmp_path / "runs/demo/dpo/merged"))) == "demo-M2"
    assert served_name(str(model_dir(tmp_path / "runs/demo/sft/merged"))) == "demo-M1"
    assert served_name(str(model_dir(tmp_path / "exports/physics/model/merged"))) == "physics"
    assert served_name(str(model_dir(tmp_path / "exports/physics-tutor"))) == "physics-tutor"
    assert served_name(str(model_dir(tmp_path / "other/dpo/merged"))) == "other-M2"
    assert served_name(str(model_dir(tmp_path / "runs/demo/eval/merged"))) == "eval"
    assert served_name("bundled:smollm2-135m-instruct") == "smollm2-135m-instruct"
    assert served_name("HuggingFaceTB/SmolLM2-135M-Instruct") == (
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    )


def test_a_recipe_names_its_model_and_a_setting_overrides_it(tmp_path):
    recipe = tmp_path / "demo.yaml"
    recipe.write_text(f"name: demo\nrun_root: {tmp_path}/runs\n")
    assert settings("--recipe", str(recipe)).name == "demo-M0"  # nothing trained yet
    model_dir(tmp_path / "runs/demo/sft/merged")
    assert settings("--recipe", str(recipe)).name == "demo-M1"
    model_dir(tmp_path / "runs/demo/dpo/merged")
    assert settings("--recipe", str(recipe)).name == "demo-M2"
    assert settings("--recipe", str(recipe), configure=_configure_chat).name == "demo-M2"
    elsewhere = model_dir(tmp_path / "exports/physics/merged")
    assert settings("--recipe", str(recipe), "--model", str(elsewhere)).name == "physics"
    assert settings("--recipe", str(recipe), "--served-name", "tutor-v1").name == "tutor-v1"
    assert settings("--name", "tutor-v2").name == "tutor-v2"
    assert settings("--served-name", "tutor-v3", configure=_configure_chat).name == "tutor-v3"
    named = tmp_path / "named.yaml"
    named.write_text(f"name: named\nrun_root: {tmp_path}/runs\nserve: {{served_name: physics}}\n")
    assert settings("--recipe", str(named)).name == "physics"
    assert settings().name == "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    engine = ScriptedEngine(tokenizer, ["Mass ", "times velocity."], name="demo-M2")
    with BackgroundServer(create_app(Tutor(engine, mode="hint"))) as running:
        yield running


def test_the_served_name_is_listed_and_in_every_reply(server):
    listed = httpx.get(f"{server.url}/v1/models").json()["data"]
    assert [(card["id"], card["mode"], card["modes"]) for card in listed] == [
        ("demo-M2", "hint", ["tutor", "hint"])
    ]
    card = httpx.get(f"{server.url}/v1/models/demo-M2").json()
    assert (card["id"], card["object"], card["owned_by"]) == ("demo-M2", "model", "tutorlm")
    assert httpx.get(f"{server.url}/health").json()["model"] == "demo-M2"
    body = {"model": "demo-M2", "messages": QUESTION}
    whole = httpx.post(f"{server.url}/v1/chat/completions", json=body).json()
    assert (whole["model"], whole["choices"][0]["message"]["content"]) == (
        "demo-M2",
        "Mass times velocity.",
    )
    streamed = httpx.post(f"{server.url}/v1/chat/completions", json={**body, "stream": True})
    events = [
        json.loads(line.removeprefix("data: "))
        for line in streamed.text.splitlines()
        if line.startswith("data: {")
    ]
    assert len(events) == 4  # role, two pieces, finish
    assert {event["model"] for event in events} == {"demo-M2"}


def test_the_directory_name_is_not_served(server):
    reply = httpx.post(
        f"{server.url}/v1/chat/completions", json={"model": "merged", "messages": QUESTION}
    )
    assert reply.status_code == 404
    assert reply.json()["error"]["message"] == (
        "model 'merged' is not served here; this server serves 'demo-M2'"
    )


def test_a_recipe_serves_the_model_its_run_handed_over(tmp_path):
    """The run's report writes ``served.json`` (its int8 copy once that met its target);
    ``serve --recipe`` and ``chat --recipe`` serve that model, named for what it is."""
    import json

    recipe = tmp_path / "demo.yaml"
    recipe.write_text(f"name: demo\nrun_root: {tmp_path}/runs\n")
    model_dir(tmp_path / "runs/demo/dpo/merged")
    int8 = model_dir(tmp_path / "runs/demo/quantize/models/int8-packed")
    (int8 / "quantization.json").write_text("{}")
    choice = tmp_path / "runs/demo/served.json"
    choice.write_text(json.dumps({"model": str(int8), "why": "int8-packed M2: it met ..."}))
    for configure in (_configure_serve, _configure_chat):
        chosen = settings("--recipe", str(recipe), configure=configure)
        assert (chosen.model, chosen.name) == (str(int8), "demo-M2-int8-packed")
    choice.write_text(json.dumps({"model": str(tmp_path / "runs/demo/gone"), "why": "..."}))
    chosen = settings("--recipe", str(recipe))
    assert (chosen.model, chosen.name) == (str(tmp_path / "runs/demo/dpo/merged"), "demo-M2")
    choice.write_text("not json")
    assert settings("--recipe", str(recipe)).name == "demo-M2"
