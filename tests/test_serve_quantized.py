"""What is evaluated is what is served: the quantize stage's int8 copy of M2 loads in
``tutorlm serve``/``chat`` as the quantized model it is, under a name that says so, and
a run hands it to the printed commands only when it met its accuracy target."""

from __future__ import annotations

import json

import pytest

from tutorlm.quantize.saving import quantize_to_dir
from tutorlm.recipe import recipe_from_dict
from tutorlm.serve.commands import served_name
from tutorlm.serve.engine import GenerationRequest, LocalEngine
from tutorlm.serve.loading import load_serving_model


@pytest.fixture(scope="module")
def int8_run(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    recipe = recipe_from_dict({"name": "demo", "run_root": str(root)})
    path = recipe.layout.quantized_model("int8-packed")
    quantize_to_dir(str(tiny_model_dir), "int8-packed", path)
    return recipe, path


def test_the_int8_copy_is_served_quantized_and_named_for_what_it_is(int8_run):
    from tutorlm.packed.layers import PackedInt8Linear

    recipe, path = int8_run
    model, tokenizer = load_serving_model(str(path), device="cpu")
    assert any(isinstance(module, PackedInt8Linear) for module in model.modules())
    assert served_name(str(path)) == "demo-M2-int8-packed"
    engine = LocalEngine(model, tokenizer, name=served_name(str(path)))
    try:
        stream = engine.submit(GenerationRequest([{"role": "user", "content": "Hi"}], 3))
        reply = stream.text()
    finally:
        engine.close()
    from tutorlm.generation import chat

    assert reply == chat(model, tokenizer, [{"role": "user", "content": "Hi"}], max_new_tokens=3)
    assert stream.finish.completion_tokens == 3


def _compare(recipe, agree: bool):
    """A quantize comparison whose int8 row agrees (or not) with the fp32 row."""
    rows = [
        {"label": "fp32", "kind": "reference", "bits": 32, "tasks": {}},
        {"label": "int8-packed", "kind": "quantized", "bits": 8, "tasks": {}},
    ]
    folder = recipe.layout.quantize_dir
    (folder / "compare.json").write_text(json.dumps({"rows": rows}))
    answers = [{"id": str(i), "predicted": 0, "correct": True} for i in range(10)]
    other = [{**a, "predicted": 1, "correct": False} if not agree else a for a in answers]
    for label, rows_ in (("fp32", answers), ("int8-packed", other)):
        (folder / "rows" / label).mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(row) + "\n" for row in rows_)
        (folder / "rows" / label / "predictions.mcqa_test.jsonl").write_text(text)


def test_a_run_hands_over_the_int8_copy_only_when_it_met_its_target(int8_run):
    from tutorlm.pipeline.targets import served_model

    recipe, path = int8_run
    _compare(recipe, agree=True)
    model, why = served_model(recipe)
    assert model == str(path) and why.startswith("int8-packed M2: it met its accuracy target")
    _compare(recipe, agree=False)
    model, why = served_model(recipe)
    assert model == recipe.layout.final_model()
    assert why == "the float model: the int8 copy missed its target (the report's Targets)"
