"""The CLI table: help lists commands, unknown commands fail, data validate reports."""

from __future__ import annotations

import json
import subprocess
import sys

from tutorlm.cli import COMMANDS, main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, command in COMMANDS.items():
        assert f"  {name}" in out and command.help in out


def test_unknown_command_exits_2(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_data_validate_names_the_broken_line(tmp_path, capsys):
    good = {"id": "m1", "source": "t", "question": "q", "choices": ["a", "b"], "answer": 0}
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "answer": "zero"}) + "\n")
    assert main(["data", "validate", str(path), "--kind", "mcqa"]) == 1
    out = capsys.readouterr().out
    assert "1 good mcqa records, 1 bad" in out
    assert f"{path}:2: field 'answer'" in out


def test_data_validate_strict_stops_with_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": "m1"\n')
    assert main(["data", "validate", str(path), "--kind", "mcqa", "--strict"]) == 1
    err = capsys.readouterr().err
    assert (
        err.strip() == f"error: {path}:1: field '(line)': not valid JSON (Expecting ',' delimiter)"
    )


def test_python_dash_m_runs_the_same_cli():
    done = subprocess.run(
        [sys.executable, "-m", "tutorlm", "--help"], capture_output=True, text=True, check=True
    )
    assert "model prepare" in done.stdout


def test_model_prepare_on_a_local_directory(tiny_model_dir, capsys):
    assert main(["model", "prepare", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert "class       LlamaForCausalLM" in out
    assert "chat template present" in out


def test_model_ask_streams_an_answer(tiny_model_dir, capsys):
    assert main(["model", "ask", str(tiny_model_dir), "Hi?", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.endswith("\n")


def parser_of(name: str):
    import argparse

    parser = argparse.ArgumentParser(prog=f"tutorlm {name}")
    COMMANDS[name].configure(parser)
    return parser


def test_every_command_builds_its_parser_and_settings_flags_follow_the_config():
    from tutorlm.evaluate.config import EvalConfig
    from tutorlm.serve.config import ServeConfig

    parsers = {name: parser_of(name) for name in COMMANDS}
    dests = {name: {a.dest for a in p._actions} for name, p in parsers.items()}
    assert {f"serve:{field}" for field in ServeConfig.model_fields} <= dests["serve"]
    blocks = {"judge"}  # a nested block: `tutorlm judge`'s flags, or eval.judge=... overrides
    assert {f"eval:{field}" for field in EvalConfig.model_fields} - {"eval:judge"} <= dests["eval"]
    assert {f"eval:{field}" for field in blocks}.isdisjoint(dests["eval"])
    for name in ("eval", "eval files", "eval rag", "chat", "serve", "ask", "index build"):
        assert "online" in dests[name], name


def test_generated_flags_give_only_what_was_typed():
    from tutorlm.cli_flags import given, overrides

    args = parser_of("eval").parse_args(
        ["r.yaml", "--method", "choice", "--tasks", "mmlu_stem,mcqa_test", "--no-chat"]
    )
    assert given(args, "eval") == {
        "tasks": ["mmlu_stem", "mcqa_test"],
        "mcqa_method": "choice",
        "chat": False,
    }
    assert overrides(args, "eval") == [
        'eval.tasks=["mmlu_stem", "mcqa_test"]',
        'eval.mcqa_method="choice"',
        "eval.chat=false",
    ]
    threads = parser_of("eval files").parse_args(["--model", "m", "--out", "o", "--threads", "2"])
    assert given(threads, "eval") == {"threads": 2}
    serve = parser_of("serve").parse_args(
        ["--max-tokens", "9", "--search-mode", "bm25", "--k", "2"]
    )
    assert (given(serve, "serve"), given(serve, "rag")) == (
        {"default_max_tokens": 9, "rag_k": 2},
        {"mode": "bm25"},
    )
    help_text = parser_of("eval").format_help()
    assert "Bootstrap resamples behind every 95 % interval" in help_text
