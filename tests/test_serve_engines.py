"""``--engine``: which engine ``auto`` picks and why, and that an explicit choice that
cannot work fails before any model is loaded.

vLLM and the stepped engine are stand-ins here: ``vllm`` is made missing or a bare
module, and ``tutorlm.serve.stepped`` a fake module whose ``unsupported_reason`` the
test decides (or missing), so the expectations hold whether or not either is installed.
"""

from __future__ import annotations

import argparse
import sys
import types

import pytest
import torch

from tutorlm.errors import TutorlmError
from tutorlm.serve.backend import RemoteEngine
from tutorlm.serve.commands import SERVE, _configure_chat, build_tutor, resolve_settings
from tutorlm.serve.engine import LocalEngine
from tutorlm.serve.engines import EnginePlan, open_engine, plan_engine

NO_VLLM = "not vllm: vLLM is not installed (pip install 'tutorlm[vllm]')"


class FakeStepped:
    """Stands in for ``SteppedEngine``: records how it was made."""

    def __init__(self, model, tokenizer, **kwargs):
        self.model, self.tokenizer, self.kwargs = model, tokenizer, kwargs
        self.name = kwargs["name"]

    def close(self) -> None:
        pass


def stepped_module(reason: str | None) -> types.ModuleType:
    module = types.ModuleType("tutorlm.serve.stepped")
    module.SteppedEngine = FakeStepped
    module.asked = []

    def unsupported_reason(model):
        module.asked.append(model)
        return reason

    module.unsupported_reason = unsupported_reason
    return module


@pytest.fixture
def cpu_only(monkeypatch):
    """No vLLM, no GPU, and a stepped engine that supports every model."""
    monkeypatch.setitem(sys.modules, "vllm", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    module = stepped_module(None)
    monkeypatch.setitem(sys.modules, "tutorlm.serve.stepped", module)
    return module


@pytest.fixture
def gpu_with_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def parsed(*argv: str) -> tuple[argparse.Namespace, object]:
    parser = argparse.ArgumentParser()
    SERVE.configure(parser)
    args = parser.parse_args(list(argv))
    return args, resolve_settings(args)


@pytest.fixture
def no_loading(monkeypatch):
    """Any model load fails the test: errors must come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("tutorlm.serve.loading.load_serving_model", refuse)
    monkeypatch.setattr("tutorlm.models.load_tokenizer", refuse)


def test_auto_picks_by_model_backend_and_machine(cpu_only, monkeypatch, tmp_path):
    assert plan_engine("auto", "x/model.Q8_0.GGUF", backend=None, device="auto") == EnginePlan(
        "llama.cpp", "the model is a GGUF file"
    )
    for engine in ("transformers", "stepped"):
        assert plan_engine(engine, "model.q8_0.gguf", backend=None, device="cpu") == EnginePlan(
            engine, f"--engine {engine} (the GGUF dequantized to float by transformers)"
        )
    assert plan_engine("auto", "m", backend="http://gpu:8001", device="auto") == EnginePlan(
        "remote", "--backend http://gpu:8001"
    )
    assert plan_engine("auto", "m", backend=None, device="auto") == EnginePlan("local", NO_VLLM)
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    assert plan_engine("auto", "m", backend=None, device="auto") == EnginePlan(
        "local", "not vllm: vLLM needs a CUDA GPU and the device is cpu"
    )


def test_auto_picks_vllm_on_the_first_gpu_for_a_safetensors_model(gpu_with_vllm, tmp_path):
    assert plan_engine("auto", "m", backend=None, device="auto") == EnginePlan(
        "vllm", "a CUDA GPU and vLLM installed"
    )
    assert plan_engine("auto", "m", backend=None, device="cuda:1") == EnginePlan(
        "local", "not vllm: vLLM needs a CUDA GPU and the device is cuda:1"
    )
    (tmp_path / "quantization.json").write_text("{}")
    assert plan_engine("auto", str(tmp_path), backend=None, device="cuda") == EnginePlan(
        "local", "not vllm: vLLM cannot load tutorlm's quantized copies (quantization.json)"
    )
    assert plan_engine("vllm", "m", backend=None, device="cuda") == EnginePlan(
        "vllm", "--engine vllm"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--model", "tutor.q8_0.gguf", "--engine", "vllm"],
            "--engine vllm cannot serve the GGUF file tutor.q8_0.gguf: it loads safetensors "
            "checkpoints; use --engine llama.cpp (or auto), or transformers to serve it "
            "dequantized to float",
        ),
        (
            ["--model", "runs/demo/dpo/merged", "--engine", "llama.cpp"],
            "--engine llama.cpp serves GGUF files, and runs/demo/dpo/merged is not one: write "
            "one with tutorlm quantize --model runs/demo/dpo/merged --gguf q8_0",
        ),
        (
            ["--engine", "vllm"],
            "--engine vllm cannot run: vLLM is not installed (pip install 'tutorlm[vllm]')",
        ),
        (
            ["--engine", "vllm", "--backend", "http://gpu:8001"],
            "--backend sends generation to http://gpu:8001; --engine vllm runs it here: give "
            "one of the two",
        ),
    ],
)
def test_an_explicit_choice_that_cannot_work_fails_before_loading(
    cpu_only, no_loading, argv, message
):
    args, settings = parsed(*argv)
    with pytest.raises(TutorlmError) as caught:
        open_engine(args, settings)
    assert str(caught.value) == message


def test_vllm_without_a_gpu_and_a_missing_stepped_engine_fail_before_loading(
    cpu_only, no_loading, monkeypatch
):
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    with pytest.raises(TutorlmError, match="^--engine vllm cannot run: vLLM needs a CUDA GPU"):
        open_engine(*parsed("--engine", "vllm"))
    monkeypatch.setitem(sys.modules, "tutorlm.serve.stepped", None)  # import fails
    with pytest.raises(
        TutorlmError, match="^--engine stepped: this install has no stepped engine$"
    ):
        open_engine(*parsed("--engine", "stepped"))
    with pytest.raises(TutorlmError, match=r"^--engine 'fast' is not one of auto, transformers"):
        plan_engine("fast", "m", backend=None, device="cpu")


def test_the_flag_takes_the_five_engines_in_serve_and_chat():
    for configure in (SERVE.configure, _configure_chat):
        parser = argparse.ArgumentParser()
        configure(parser)
        assert parser.parse_args([]).engine == "auto"
        assert parser.parse_args(["--engine", "llama.cpp"]).engine == "llama.cpp"
        with pytest.raises(SystemExit):
            parser.parse_args(["--engine", "tgi"])


def test_auto_serves_with_stepped_when_it_supports_the_model(cpu_only, tiny_model_dir):
    engine, plan = open_engine(*parsed("--model", str(tiny_model_dir), "--max-batch", "3"))
    assert isinstance(engine, FakeStepped)
    assert plan == EnginePlan("stepped", f"{NO_VLLM}; stepped fits")
    assert cpu_only.asked == [engine.model]
    assert engine.kwargs == {"name": tiny_model_dir.name, "max_batch": 3, "max_queue": 64}
    assert engine.tokenizer.chat_template


def test_auto_falls_back_to_transformers_with_the_stepped_engine_s_reason(
    cpu_only, monkeypatch, tiny_model_dir
):
    monkeypatch.setitem(sys.modules, "tutorlm.serve.stepped", stepped_module("no static cache"))
    engine, plan = open_engine(*parsed("--model", str(tiny_model_dir)))
    try:
        assert isinstance(engine, LocalEngine)
        assert plan == EnginePlan("transformers", f"{NO_VLLM}; not stepped: no static cache")
    finally:
        engine.close()
    monkeypatch.setitem(sys.modules, "tutorlm.serve.stepped", None)  # not written yet
    engine, plan = open_engine(*parsed("--model", str(tiny_model_dir)))
    try:
        assert isinstance(engine, LocalEngine)
        assert plan.reason == f"{NO_VLLM}; not stepped: this install has no stepped engine"
    finally:
        engine.close()


def test_explicit_transformers_and_stepped_are_what_is_served(
    cpu_only, monkeypatch, tiny_model_dir
):
    engine, plan = open_engine(*parsed("--model", str(tiny_model_dir), "--engine", "transformers"))
    engine.close()
    assert isinstance(engine, LocalEngine) and cpu_only.asked == []
    assert plan == EnginePlan("transformers", "--engine transformers")
    engine, plan = open_engine(*parsed("--model", str(tiny_model_dir), "--engine", "stepped"))
    assert isinstance(engine, FakeStepped)
    assert plan == EnginePlan("stepped", "--engine stepped")
    monkeypatch.setitem(sys.modules, "tutorlm.serve.stepped", stepped_module("no static cache"))
    with pytest.raises(TutorlmError) as caught:
        open_engine(*parsed("--model", str(tiny_model_dir), "--engine", "stepped"))
    assert str(caught.value) == f"--engine stepped cannot serve {tiny_model_dir}: no static cache"


def test_vllm_is_opened_with_the_serve_settings(gpu_with_vllm, monkeypatch):
    opened = []

    def open_vllm_engine(spec, **kwargs):
        opened.append((spec, kwargs))
        return "vllm engine"

    monkeypatch.setattr("tutorlm.serve.vllm_serving.open_vllm_engine", open_vllm_engine)
    args, settings = parsed(
        "--model", "org/tutor", "--max-batch", "32", "--chat-template", "chatml"
    )
    assert open_engine(args, settings) == (
        "vllm engine",
        EnginePlan("vllm", "a CUDA GPU and vLLM installed"),
    )
    assert opened == [
        (
            "org/tutor",
            {
                "name": "org/tutor",
                "chat_template": "chatml",
                "device": "auto",
                "max_batch": 32,
                "max_queue": 64,
                "trust_remote_code": False,
                "online": None,
            },
        )
    ]


def test_build_tutor_says_which_engine_and_why(cpu_only, tiny_model_dir, capsys):
    args, settings = parsed(
        "--model", str(tiny_model_dir), "--backend", "http://127.0.0.1:9", "--backend-model", "t"
    )
    tutor = build_tutor(args, settings)
    try:
        assert isinstance(tutor.engine, RemoteEngine) and tutor.engine.model == "t"
        assert capsys.readouterr().err == "engine: remote (--backend http://127.0.0.1:9)\n"
    finally:
        tutor.engine.close()
