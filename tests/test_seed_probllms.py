"""ProbLLMs' recipe (``../shared/seeds/004_*``) carries the report's numbers: every
expected value is a literal from the report, compared with the resolved recipe."""

from __future__ import annotations

from seed_support import RECIPES, recipe, sources, variant

from tutorlm.pipeline.sweep import differing_keys, expand_variants

# -- ProbLLMs (004) ---------------------------------------------------------------------


APPENDIX_D = {  # subject: question count, as listed in Appendix D
    "abstract_algebra": 116,
    "elementary_mathematics": 424,
    "college_mathematics": 116,
    "formal_logic": 145,
    "high_school_mathematics": 304,
    "high_school_statistics": 244,
    "anatomy": 154,
    "astronomy": 173,
    "college_biology": 165,
    "college_chemistry": 113,
    "conceptual_physics": 266,
    "college_physics": 118,
    "high_school_biology": 347,
    "high_school_chemistry": 230,
    "high_school_physics": 173,
    "virology": 189,
    "medical_genetics": 116,
    "college_computer_science": 116,
    "high_school_computer_science": 114,
    "machine_learning": 128,
    "computer_security": 116,
    "electrical_engineering": 166,
    "logical_fallacies": 186,
}


def test_probllms_model_and_seed():
    probllms = recipe("probllms")
    assert probllms.model == "deepseek-ai/deepseek-math-7b-rl"  # §3
    assert probllms.seed == 0  # Appendix C
    assert probllms.data.sft is None and probllms.train.dpo_start == "m0"  # §3: DPO only


def test_probllms_appendix_c_hyperparameters():
    train = recipe("probllms").train
    lora = train.lora
    assert (lora.r, lora.alpha, lora.dropout) == (8, 16, 0.05)
    assert (train.loss, train.beta) == ("dpo", 0.05)  # "Lora_beta 0.05", read as DPO's beta
    assert train.dpo == {
        "bf16": True,
        "optim": "paged_adamw_32bit",
        "activation_checkpointing": True,  # not in the table: what 80 GB needs at 7B
        "max_steps": 2_000,
        "adam_beta1": 0.9,
        "adam_beta2": 0.999,
        "adam_epsilon": 1e-8,
        "eval_strategy": "steps",
        "eval_steps": 100,
        "learning_rate": 5e-4,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 100,
        "weight_decay": 0.05,
        "max_grad_norm": 1.0,
        "per_device_train_batch_size": 8,
        "max_length": 2_048,
    }


def test_probllms_preference_data():
    prefs = recipe("probllms").data.prefs
    found = sources(prefs)
    students = found.pop("students")
    assert students.annotated.drop_both_incorrect  # §2: both-incorrect pairs removed
    assert prefs.split == {"train": 0.8, "test": 0.2}  # §4.1: 80 % / 20 %
    assert students.to_split is None
    assert {s.to_split for s in found.values()} == {"train"}  # §4.1: extra data trains only
    assert (found["camel_math"].count, found["camel_physics"].count) == (2_500, 3_000)  # §2
    for name in ("cs_theory", "camel_math", "camel_physics"):  # §2, Appendix A
        corrupt = found[name].corrupt
        assert (corrupt.method, corrupt.n_ops) == ("model", 2)  # two of the three prompts
        assert sorted(corrupt.ops) == ["insert", "remove", "substitute"]
    for name in ("se_math", "se_physics", "se_cs"):  # §2: chosen >= 10, rejected 3 to 5
        pairing = found[name].pairing
        assert (pairing.chosen_min, pairing.rejected_min, pairing.rejected_max) == (10, 3, 5)


def test_probllms_student_only_variant_trains_on_the_students_alone():
    student_only = variant("probllms", "student_only").recipe  # §4.1, Table 1
    assert [s.name for s in student_only.data.prefs.sources] == ["students"]
    full = variant("probllms", "probllm7b").recipe
    # "the same hyperparameter configuration but a different data distribution"
    assert differing_keys(full, student_only) == ["data.prefs.sources"]


def test_probllms_mcqa_evaluation_sets():
    probllms = recipe("probllms")
    sets = probllms.data.eval_sets
    # §2: ARC Easy and Challenge (5,196 and 2,590 questions: every split)
    assert {(s.preset, s.split) for s in sets["arc"].sources} == {
        (config, split)
        for config in ("arc_easy", "arc_challenge")
        for split in ("train", "validation", "test")
    }
    # Appendix D: 23 subjects, 4,219 questions (test, validation and dev splits)
    assert sum(APPENDIX_D.values()) == 4_219
    for source in sets["mmlu"].sources:
        assert source.subjects == list(APPENDIX_D)
    assert {s.split for s in sets["mmlu"].sources} == {"test", "validation", "dev"}
    # §2: GSM8K (8,792 = train + test), distractors = answer + offsets in [-10, 10]
    gsm8k = sets["gsm8k_mcqa"].sources
    assert {s.split for s in gsm8k} == {"train", "test"}
    assert {(s.distractors.method, s.distractors.offset) for s in gsm8k} == {("numeric", 10)}
    # §2: MATH (12,500 = 7 subjects x train + test), one number moved by [-5, 5]
    math = sets["math_mcqa"].sources
    assert len({s.config for s in math}) == 7 and {s.split for s in math} == {"train", "test"}
    assert {(s.distractors.method, s.distractors.offset) for s in math} == {("boxed", 5)}
    assert {s.distractors.balanced for s in gsm8k + math} == {False}  # the report's offsets
    assert probllms.eval.tasks == [
        "reward",  # §4.1 Table 1: test reward accuracy
        "mcqa:arc",
        "mcqa:mmlu",
        "mcqa:gsm8k_mcqa",
        "mcqa:math_mcqa",
        "mcqa_test",  # the notes questions of the RAG ablation
    ]


def test_probllms_rag_ablation():
    rag = recipe("probllms").rag
    assert rag.sources and rag.mode == "dense"  # §5: a search of a vector index
    assert rag.ablation_ks == [1, 3, 5]


def test_probllms_baseline_is_a_smaller_model_trained_by_its_sweep_variant():

    probllms = recipe("probllms")
    _, variants = expand_variants(RECIPES / "probllms.yaml")
    baseline = variants[0]  # first, so that the 7B variants' tables find its model
    assert (baseline.name, baseline.recipe.model) == ("baseline", "Qwen/Qwen2.5-Math-1.5B-Instruct")
    assert baseline.recipe.quantize.methods == [] and baseline.recipe.rag.sources == []
    # everything else, data and training, is the 7B's
    seven_b = variants[1].recipe
    assert differing_keys(seven_b, baseline.recipe) == ["model", "quantize.methods", "rag.sources"]
    assert probllms.quantize.baselines() == [baseline.recipe.layout.model("M2")]
    assert all(v.recipe.quantize.baselines() == probllms.quantize.baselines() for v in variants)
    _, smoke = expand_variants(RECIPES / "probllms.yaml", smoke=True, only=["baseline"])
    assert smoke[0].recipe.quantize.baselines() == [smoke[0].recipe.layout.model("M2")]


def test_probllms_rag_ablation_asks_m2_and_the_base_model_on_its_mcqa_sets():
    from tutorlm.evaluate.ablations import ablation_models

    probllms = recipe("probllms")
    assert probllms.rag.ablation_models == ["M2", "M0"]
    assert ablation_models(probllms) == [
        ("M2", probllms.layout.model("M2")),
        ("M0", "deepseek-ai/deepseek-math-7b-rl"),
    ]
    assert probllms.rag.ablation_questions == [
        "notes",
        *[t for t in probllms.eval.tasks if t.startswith("mcqa:")],
    ]
    for other in ("zephyr", "epfllama"):  # the others keep the final model on notes
        assert (recipe(other).rag.ablation_models, recipe(other).rag.ablation_questions) == (
            [],
            ["notes"],
        )
    demo = recipe("demo").rag  # and the demo asks its practice quiz too
    assert (demo.ablation_models, demo.ablation_questions, demo.quiz_count) == (
        [],
        ["notes", "quiz"],
        60,
    )
