"""The three reports' recipes carry the reports' numbers, so that an edit cannot drift.

Every expected value below is a literal copied from the report it cites
(``../shared/seeds/000_*`` ZEPHYR, ``002_*`` EPFLLaMA, ``004_*`` ProbLLMs), and is
compared with the *resolved* recipe (presets expanded), i.e. with what a run uses.
"""

from __future__ import annotations

import json

import pytest
from seed_support import RECIPES, recipe, sources, variant

from tutorlm.data.build import build_data
from tutorlm.pipeline.sweep import expand_variants
from tutorlm.recipe import recipe_from_dict
from tutorlm.templates import resolve_template

# -- ZEPHYR (000) -----------------------------------------------------------------------


def test_zephyr_models():
    zephyr = recipe("zephyr")
    assert zephyr.model == "Qwen/Qwen1.5-0.5B-Chat"  # §1, §3
    assert variant("zephyr", "bloom").recipe.model == "bigscience/bloom-560m"  # §1, §3


def test_zephyr_sft_mix_d_s():
    sft = recipe("zephyr").data.sft
    # §2: ten datasets, N_i = min(12000, S_i) of each
    assert len(sft.sources) == 10
    assert {s.cap for s in sft.sources} == {12_000}
    assert {s.count for s in sft.sources} == {None}
    presets = {getattr(s, "preset", None) or s.name for s in sft.sources}
    assert presets == {
        "cosmopedia_khanacademy",  # Khan Academy
        "math_college",  # Math College
        "arxiv_math_instruct",  # Arxiv-Math
        "magicoder_oss_instruct",  # Magicoder
        "goat",  # goat
        "metamathqa",  # MetaMathQA
        "glaive_code_assistant",  # Code Assistant
        "lima",  # Lima
        "open_platypus",  # Open Platypus
        "mathinstruct",  # Math Instruct
    }
    assert sft.split == {"train": 0.95, "val": 0.05}  # §4: 5 % held out


def test_zephyr_dpo_mix():
    prefs = recipe("zephyr").data.prefs
    counts = {s.name: s.count for s in prefs.sources}
    assert counts.pop("epfl") == 1_500  # §2: 1500 for the EPFL dataset
    assert set(counts.values()) == {1_000}  # §2: 1000 from each other dataset
    assert 1_500 + sum(counts.values()) == 12_500  # §2: a 12500-sample DPO dataset
    epfl = sources(prefs)["epfl"].annotated
    assert epfl.drop_ties and "AB" in epfl.tie_values  # §2: "overall" different from AB
    assert epfl.drop_empty  # §2: excluding empty samples
    assert prefs.split == {"train": 0.95, "val": 0.05}  # §4: 5 % held out


def test_zephyr_mcqa_set_is_arc_and_mmlu_outside_their_test_sets():
    mcqa = recipe("zephyr").data.mcqa
    # §2: ARC and MMLU "excluding the samples from the test set"
    assert {(s.preset, s.split) for s in mcqa.sources} == {
        ("arc_easy", None),  # the preset reads train
        ("arc_challenge", None),
        ("mmlu", "auxiliary_train"),
    }


def test_zephyr_table_2_sft_hyperparameters():
    train = recipe("zephyr").train
    assert train.sft == {
        "per_device_train_batch_size": 16,
        "learning_rate": 5e-5,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 1_000,
        "gradient_accumulation_steps": 8,
        "optim": "adamw_torch",
        "num_train_epochs": 2,
        "max_length": 2_048,
        "eval_strategy": "steps",  # Figs. 2-3's validation curves
        "eval_steps": 100,
    }
    assert (train.lora.r, train.lora.alpha) == (8, 16)
    assert train.dpo_lora is None  # Table 3: the same LoRA r 8, alpha 16
    bloom = variant("zephyr", "bloom").recipe.train.lora  # BLOOM's names for the same weights
    assert (bloom.r, bloom.alpha, bloom.target_modules) == (8, 16, ["query_key_value", "dense"])


def test_zephyr_table_3_dpo_hyperparameters():
    train = recipe("zephyr").train
    assert train.dpo == {
        "per_device_train_batch_size": 16,
        "learning_rate": 5e-5,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 200,
        "gradient_accumulation_steps": 8,
        "optim": "adamw_torch",
        "num_train_epochs": 3,
        "max_length": 2_048,
        "eval_strategy": "steps",  # §4's validation reward accuracy
        "eval_steps": 20,
    }
    assert (train.loss, train.beta, train.eps, train.dpo_start) == ("dpo", 0.1, 0.0, "m1")


def test_zephyr_sweep_has_the_reports_comparisons():
    # §4 / Figures 2-3: constant against cosine; §4 / Table 1: DPO from M0
    constant = variant("zephyr", "qwen_constant").recipe
    assert constant.train.sft["lr_scheduler_type"] == "constant"
    assert variant("zephyr", "dpo_from_m0").recipe.train.dpo_start == "m0"
    bloom_constant = variant("zephyr", "bloom_constant").recipe
    assert (bloom_constant.model, bloom_constant.train.sft["lr_scheduler_type"]) == (
        "bigscience/bloom-560m",
        "constant",
    )
    assert variant("zephyr", "qlora").recipe.train.qlora is True  # §5


SHIPS_A_CHAT_TEMPLATE = {"Qwen/Qwen1.5-0.5B-Chat"}  # ChatML in its tokenizer_config.json
"""Hub models of the seed recipes whose tokenizer carries its own chat template;
BLOOM-560M's does not, so a recipe on it must name one."""


def test_every_zephyr_variant_renders_chats_with_a_template():
    variants = expand_variants(RECIPES / "zephyr.yaml")[1]
    assert {v.name for v in variants} >= {"bloom", "bloom_constant"}
    for v in variants:
        template = resolve_template(v.recipe.chat_template)
        assert template is not None or v.recipe.model in SHIPS_A_CHAT_TEMPLATE, v.name
    for name in ("bloom", "bloom_constant"):
        assert variant("zephyr", name).recipe.chat_template == "chatml"
    assert recipe("zephyr").chat_template is None  # Qwen keeps its own ChatML


def test_zephyr_table_1_evaluation():
    zephyr = recipe("zephyr")
    assert zephyr.eval.tasks == [
        "choice:hellaswag",  # HellaSwag, normalised accuracy
        "generation:gsm8k_answers",  # BLEU-4, ROUGE-1/2/L
        "reward:epfl_test",  # reward accuracy
        "perplexity_notes",  # §5: WikiText-2 perplexity
    ]
    sets = zephyr.data.eval_sets
    assert sets["gsm8k_answers"].kind == "sft"
    assert sets["gsm8k_answers"].sources[0].count == 200  # 200 samples from GSM8K
    assert sets["epfl_test"].kind == "preference"
    assert sets["epfl_test"].sources[0].count == 100  # 100 samples of the EPFL pairs
    assert sets["hellaswag"].sources[0].preset == "hellaswag"


# -- EPFLLaMA (002) ---------------------------------------------------------------------


def test_epfllama_model_template_and_prompt():
    epfllama = recipe("epfllama")
    assert epfllama.model == "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T"  # §3
    assert epfllama.chat_template == "zephyr"  # §2: the Zephyr-7B-beta chat template
    assert epfllama.data.system_prompt == (  # Appendix A
        "You are an experienced teacher who answers the STEM-related question asked by a "
        "student below."
    )
    assert (epfllama.data.max_tokens, epfllama.data.over_length) == (2_000, "drop")  # §2
    assert epfllama.smoke.pad_token is False  # §3: TinyLlama has no pad token


def test_epfllama_sft_data():
    sft = recipe("epfllama").data.sft
    # §2: Data Science, Computer Science, Physics and Mathematics; best answer >= 4
    assert {s.preset for s in sft.sources} == {
        "stackexchange_datascience",
        "stackexchange_cs",
        "stackexchange_physics",
        "stackexchange_math",
    }
    assert {s.best_answer_min_score for s in sft.sources} == {4}
    assert sft.split == {"train": 0.9, "val": 0.1}  # §2: 90 % / 10 %
    assert sum(s.cap for s in sft.sources) == 11_000  # §2: "approximately 11,000"


def test_epfllama_dpo_data():
    prefs = recipe("epfllama").data.prefs
    found = sources(prefs)
    students = found.pop("students")
    assert students.count == 10_000  # §2: 10,000 student-annotated pairs
    assert students.annotated.drop_mcqa and students.annotated.drop_empty  # §2
    assert sum(s.count for s in found.values()) == 10_000  # §2: 10,000 Stack Exchange pairs
    for source in found.values():  # §2: best and worst answers scoring >= 2
        pairing = source.pairing
        assert (pairing.method, pairing.chosen_min, pairing.rejected_min) == ("best_worst", 2, 2)
    assert prefs.split == {"train": 0.9, "test": 0.1}
    assert round(20_000 * prefs.split["train"]) == 18_000  # §2: 18,000 train / 2,000 test


def test_epfllama_mcqa_letters_come_from_the_student_data():
    (letters,) = recipe("epfllama").data.mcqa.sources
    assert (letters.shape, letters.path) == ("annotated", "data/epfllama/student_pairs.jsonl")
    assert "options" in letters.columns  # §2: chosen answers mapped to one letter


def test_epfllama_training_hyperparameters():
    train = recipe("epfllama").train
    projections = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert (train.lora.r, train.lora.alpha, train.lora.target_modules) == (32, 32, projections)
    dpo_lora = train.dpo_lora  # §4.1: LoRA r 64, alpha 64 for DPO
    assert (dpo_lora.r, dpo_lora.alpha, dpo_lora.target_modules) == (64, 64, projections)
    assert (train.loss, train.eps, train.beta, train.dpo_start) == ("cdpo", 0.2, 0.1, "m1")
    assert train.dpo == {  # §4.1
        "learning_rate": 5e-7,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.1,  # warm-up ratio 0.1
        "per_device_train_batch_size": 4,
        "num_train_epochs": 2,
        "max_length": 2_048,
        "bf16": True,
        "eval_strategy": "steps",  # Figs. 5-6's validation curves
        "eval_steps": 500,
    }
    assert train.sft["eval_steps"] == 200  # Fig. 2's SFT validation loss
    assert variant("epfllama", "beta0.4").recipe.train.beta == 0.4  # §4.3
    assert variant("epfllama", "beta0.1").recipe.train.beta == 0.1


def test_epfllama_evaluates_reward_accuracy():
    assert recipe("epfllama").eval.tasks == ["reward"]  # §4.2


# -- what every recipe promises ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "family"), [("zephyr", "qwen2"), ("epfllama", "llama"), ("probllms", "llama")]
)
def test_smoke_stand_in_has_the_architecture_of_the_real_model(name, family):
    from tutorlm.smoke import family_of

    seed = recipe(name)
    assert family_of(seed.model, seed.smoke.family) == family
    if name == "zephyr":
        bloom = variant("zephyr", "bloom").recipe
        assert family_of(bloom.model, bloom.smoke.family) == "bloom"


@pytest.mark.parametrize("name", ["zephyr", "epfllama", "probllms"])
def test_every_eval_set_task_names_an_eval_set_of_its_kind(name):
    seed = recipe(name)
    kinds = {"mcqa": "mcqa", "choice": "mcqa", "generation": "sft", "reward": "preference"}
    for task in seed.eval.tasks:
        if ":" in task:
            kind, eval_set = task.split(":")
            assert seed.data.eval_sets[eval_set].kind == kinds[kind], task


@pytest.mark.parametrize("name", ["zephyr", "epfllama", "probllms"])
def test_private_files_are_optional_local_paths(name):
    seed = recipe(name)
    local = [source for _, source in seed.data.all_sources() if source.type == "jsonl"]
    assert local and all(source.optional for source in local)
    assert all(source.path.startswith(f"data/{name}/") for source in local)


def test_eval_set_tasks_read_the_data_stage_files(tmp_path):
    from tutorlm.evaluate.runner import recipe_tasks

    seed = recipe_from_dict({"name": "p", "run_root": str(tmp_path)})
    specs = recipe_tasks(seed, ["mcqa:arc", "choice:hellaswag", "reward", "generation:gsm"])
    data = tmp_path / "p" / "data"
    assert [(s.name, s.kind, s.paths) for s in specs] == [
        ("mcqa:arc", "mcqa", [data / "arc.jsonl"]),
        ("choice:hellaswag", "choice", [data / "hellaswag.jsonl"]),
        ("reward", "reward", [data / "prefs.test.jsonl"]),
        ("generation:gsm", "generation", [data / "gsm.jsonl"]),
    ]
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['ranking:arc'\]"):
        recipe_from_dict({"name": "p", "eval": {"tasks": ["ranking:arc"]}})


def test_a_missing_private_file_is_left_out_and_the_build_goes_on(tmp_path, caplog):
    pairs = {"type": "jsonl", "path": str(tmp_path / "absent.jsonl"), "optional": True}
    columns = {"question": "q", "a": "A", "b": "B", "overall": "overall"}
    seed = recipe_from_dict(
        {
            "name": "private",
            "run_root": str(tmp_path),
            "data": {
                "prefs": {
                    "split": {"train": 0.8, "test": 0.2},
                    "sources": [
                        {**pairs, "name": "students", "shape": "annotated", "columns": columns},
                        {
                            "type": "champ",
                            "name": "champ",
                            "shape": "pair",
                            "cap": 5,
                            "to_split": "train",
                        },
                    ],
                },
                "mcqa": {
                    "sources": [
                        {**pairs, "name": "letters", "shape": "annotated", "columns": columns}
                    ]
                },
            },
        }
    )
    with caplog.at_level("WARNING", logger="tutorlm.data"):
        manifest = build_data(seed, progress=False, log=None)
    assert manifest["missing"] == {"students": pairs["path"], "letters": pairs["path"]}
    assert "source 'students'" in caplog.text and "goes on without it" in caplog.text
    outputs = {name: info["rows"] for name, info in manifest["outputs"].items()}
    assert outputs == {"prefs.train.jsonl": 5, "prefs.test.jsonl": 0}  # no mcqa section left
    saved = json.loads((tmp_path / "private" / "data" / "manifest.json").read_text())
    assert saved["missing"] == manifest["missing"]


def test_quantization_sections():
    from tutorlm.evaluate.runner import reward_reference
    from tutorlm.quantize.methods import METHODS

    zephyr = recipe("zephyr")  # §5: int8 or int4 against float32, WikiText-2 perplexity
    assert {METHODS[m].bits for m in zephyr.quantize.methods} == {8, 4}
    assert zephyr.quantize.references == ["float32"]
    assert zephyr.quantize.tasks == ["perplexity_notes"]
    assert zephyr.quantize.task_labels == {"perplexity_notes": "WikiText-2"}
    assert zephyr.eval.perplexity_files == ["data/zephyr/wikitext-2-test.txt"]
    epfllama = recipe("epfllama")  # §5: bitsandbytes 8-bit against 16-bit, reward accuracy
    assert [(METHODS[m].backend, METHODS[m].bits) for m in epfllama.quantize.methods] == [
        ("bitsandbytes", 8)
    ]
    assert (epfllama.quantize.references, epfllama.quantize.tasks) == (["bfloat16"], ["reward"])
    # ... against the model M2 was trained from, M1, as tutorlm eval measures it
    layout = epfllama.layout
    assert reward_reference(epfllama, layout.model("M2")) == layout.model("M1")
    probllms = recipe("probllms")  # §6: 4- and 8-bit against the 16-bit model, MCQA accuracy
    assert sorted(METHODS[m].bits for m in probllms.quantize.methods) == [4, 8]
    assert probllms.quantize.references == ["bfloat16"]
    mcqa_sets = ["mcqa:arc", "mcqa:mmlu", "mcqa:gsm8k_mcqa", "mcqa:math_mcqa"]
    assert probllms.quantize.tasks == mcqa_sets  # "the MCQA datasets outlined in Section 2"
    assert [t for t in probllms.eval.tasks if t.startswith("mcqa:")] == mcqa_sets
