"""Model specs: bundled conversion, local directories, offline hub ids that fail fast."""

from __future__ import annotations

import json
import time

import pytest

from tutorlm import models
from tutorlm.models import BUNDLED, ModelNotFoundError, resolve_model


def test_offline_hub_id_fails_fast_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.delenv("TUTORLM_ONLINE", raising=False)
    started = time.monotonic()
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_model("some-org/not-cached-model")
    assert time.monotonic() - started < 30  # generous: a hang would take minutes
    message = str(caught.value)
    assert "'some-org/not-cached-model' is not in the local hub cache" in message
    assert "--online" in message and "TUTORLM_ONLINE=1" in message


def test_local_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model(tmp_path)


def test_unknown_bundled_name_is_rejected():
    with pytest.raises(ModelNotFoundError, match="Unknown bundled model 'bundled:gpt-9'"):
        resolve_model("bundled:gpt-9")


def test_local_model_directory_resolves_to_itself(tiny_model_dir):
    assert resolve_model(str(tiny_model_dir)) == tiny_model_dir
    model, tokenizer = models.load_model(tiny_model_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert tokenizer.chat_template


def test_interrupted_conversion_is_redone(monkeypatch, tmp_path):
    """A conversion killed half-way leaves nothing that counts as done."""
    monkeypatch.setenv("TUTORLM_HOME", str(tmp_path))
    calls = []

    def crash(gguf, out_dir):
        (out_dir / "config.json").write_text("{}")
        raise KeyboardInterrupt  # as if killed mid-way

    monkeypatch.setattr(models, "_convert_gguf", crash)
    with pytest.raises(KeyboardInterrupt):
        models.bundled_model_dir()
    target = tmp_path / "models" / "smollm2-135m-instruct"
    assert not target.exists()
    assert list((tmp_path / "models").iterdir()) == []

    def fake_convert(gguf, out_dir):
        calls.append(gguf.name)
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_convert_gguf", fake_convert)
    assert models.bundled_model_dir() == target
    assert models.bundled_model_dir() == target  # reused, not converted twice
    assert calls == ["SmolLM2-135M-Instruct.Q4_1.gguf"]
    marker = json.loads((target / "tutorlm-conversion.json").read_text())
    assert len(marker["gguf_sha256"]) == 64


def test_half_written_target_without_marker_is_replaced(monkeypatch, tmp_path):
    monkeypatch.setenv("TUTORLM_HOME", str(tmp_path))
    stale = tmp_path / "models" / "smollm2-135m-instruct"
    stale.mkdir(parents=True)
    (stale / "garbage").write_text("x")
    monkeypatch.setattr(
        models, "_convert_gguf", lambda gguf, out: (out / "config.json").write_text("{}")
    )
    target = models.bundled_model_dir()
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "tutorlm-conversion.json"]


@pytest.mark.slow
def test_bundled_model_converts_and_answers_two_plus_two():
    from tutorlm.generation import chat

    info = models.describe_model(BUNDLED)
    assert info["parameters"] == 134_515_008
    assert info["chat_template"] is True
    model, tokenizer = models.load_model(BUNDLED)
    answer = chat(
        model, tokenizer, [{"role": "user", "content": "What is 2 + 2?"}], max_new_tokens=24
    )
    assert "4" in answer


def _copy_without_safetensors(source, target):
    import shutil

    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.safetensors"))
    return target


def test_a_pickle_only_model_folder_is_refused_by_every_loader(tiny_model_dir, tmp_path):
    folder = _copy_without_safetensors(tiny_model_dir, tmp_path / "pickled")
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    message = (
        f"{folder} has no .safetensors weights; tutorlm loads safetensors only "
        "(pickle files can run code when loaded). Convert the checkpoint first."
    )
    for load in (resolve_model, models.load_model, models.load_tokenizer):
        with pytest.raises(models.UnsafeModelError) as caught:
            load(folder)
        assert str(caught.value) == message


def test_a_model_folder_needing_its_own_code_never_runs_it_nor_asks(
    tiny_model_dir, tmp_path, monkeypatch
):
    import shutil

    folder = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, folder)
    marker = tmp_path / "code-ran"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = json.loads((folder / "config.json").read_text())
    config |= {"model_type": "evil", "auto_map": {"AutoConfig": "evil.EvilConfig",
               "AutoModelForCausalLM": "evil.EvilModel"}}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))

    def no_prompt(*args):
        raise AssertionError("asked on the terminal")

    monkeypatch.setattr("builtins.input", no_prompt)
    with pytest.raises(models.UnsafeModelError) as caught:
        models.load_causal_lm(folder)
    assert str(caught.value) == (
        f"{folder} needs its own Python code to load (auto_map in its config); "
        "tutorlm never runs code from a model folder"
    )
    assert not marker.exists()


def test_the_loader_asks_transformers_for_safetensors_and_no_remote_code(
    tiny_model_dir, monkeypatch
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    seen = []
    for auto in (AutoModelForCausalLM, AutoTokenizer):
        original = auto.from_pretrained.__func__

        def spy(cls, path, *args, _original=original, **options):
            seen.append(
                (cls.__name__, options.get("trust_remote_code"), options.get("use_safetensors"))
            )
            return _original(cls, path, *args, **options)

        monkeypatch.setattr(auto, "from_pretrained", classmethod(spy))
    models.load_model(tiny_model_dir)
    assert seen == [("AutoModelForCausalLM", False, True), ("AutoTokenizer", False, None)]
