"""Perplexity, reward accuracy, generation metrics and choice completion on fakes with known answers."""

from __future__ import annotations

import json
import math

import pytest
from eval_fakes import preferring_lm, uniform_lm

from tutorlm.data.formats import PreferenceRecord, RecordError
from tutorlm.evaluate.choice import ChoiceItem, choice_completion, read_choice_items
from tutorlm.evaluate.generation_metrics import final_number, generation_metrics
from tutorlm.evaluate.perplexity import perplexity
from tutorlm.evaluate.reward import reward_accuracy
from tutorlm.evaluate.scorer import Scorer

TEXT = (
    "Newton's second law states that the net force on a body equals its mass times its "
    "acceleration. A larger force gives a larger acceleration; a larger mass a smaller one. "
) * 6


@pytest.fixture(scope="module")
def tokenizer(smollm_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm_tokenizer_dir)


@pytest.mark.parametrize(("window", "stride"), [(1024, 512), (32, 16), (16, 16), (8, 1)])
def test_uniform_logits_give_perplexity_equal_to_the_vocabulary_size(tokenizer, window, stride):
    scorer = Scorer(uniform_lm(len(tokenizer)), tokenizer, batch_size=4)
    result = perplexity(scorer, [TEXT, "Short second document."], window=window, stride=stride)
    assert result.value == pytest.approx(len(tokenizer), rel=1e-4)
    assert result.n_tokens == len(scorer.encode(TEXT)) + len(
        scorer.encode("Short second document.")
    )
    assert result.definition.startswith(
        f"token-level, window {window}, stride {stride}, 2 documents"
    )


def test_perplexity_of_a_real_model_depends_on_the_window_as_defined(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    scorer = Scorer(model, AutoTokenizer.from_pretrained(tiny_model_dir), batch_size=4)
    whole = perplexity(scorer, TEXT, window=1024, stride=512)
    rolled = perplexity(scorer, TEXT, window=32, stride=16)
    direct = scorer.loglikelihood([("", TEXT)])[0]
    assert whole.value == pytest.approx(math.exp(-direct.logprob / direct.n_tokens), rel=1e-4)
    assert whole.n_tokens == rolled.n_tokens
    assert rolled.value != pytest.approx(whole.value, rel=1e-6)


def pair(i, chosen, rejected, source, method):
    return PreferenceRecord(
        id=f"p{i}",
        source=source,
        prompt=[{"role": "user", "content": f"Question {i}?"}],
        chosen=[{"role": "assistant", "content": chosen}],
        rejected=[{"role": "assistant", "content": rejected}],
        meta={"method": method},
    )


def test_reward_accuracy_with_known_preferences(tokenizer):
    """The policy loves the token " yes", the reference is uniform: replies with more " yes"
    tokens get higher rewards."""
    yes = tokenizer.encode(" yes")[0]
    policy = Scorer(preferring_lm(len(tokenizer), [yes], strength=20.0), tokenizer)
    reference = Scorer(uniform_lm(len(tokenizer)), tokenizer)
    pairs = [
        pair(0, "ok yes yes yes", "ok no no no", "champ", "human"),
        pair(1, "ok yes yes", "ok no", "champ", "human"),
        pair(2, "ok no no", "ok yes yes", "rg", "corrupt"),
        pair(3, "ok yes", "ok no", "rg", "corrupt"),
    ]
    result = reward_accuracy(policy, reference, pairs=pairs, beta=0.5)
    assert result.accuracy.value == pytest.approx(0.75)
    assert result.tie_rate == 0.0
    assert result.by_source["champ"]["accuracy"] == 1.0
    assert result.by_source["rg"]["accuracy"] == 0.5
    assert set(result.by_method) == {"human", "corrupt"}
    assert result.warning is None
    expected_margin = sum(r["reward_chosen"] - r["reward_rejected"] for r in result.pairs) / 4
    assert result.mean_margin == pytest.approx(expected_margin)


def test_identical_policy_and_reference_are_all_ties_and_easy_pairs_warn(tokenizer):
    same = Scorer(uniform_lm(len(tokenizer)), tokenizer)
    pairs = [pair(i, "ok yes", "ok no", "s", "m") for i in range(3)]
    tied = reward_accuracy(same, same, pairs=pairs)
    assert (tied.accuracy.value, tied.tie_rate) == (0.0, 1.0)
    yes = tokenizer.encode(" yes")[0]
    policy = Scorer(preferring_lm(len(tokenizer), [yes]), tokenizer)
    easy = reward_accuracy(policy, same, pairs=pairs)
    assert easy.accuracy.value == 1.0 and "too easy" in easy.warning


def test_identical_strings_give_bleu_100_and_rouge_1():
    answers = [
        "Natalia sold 48 clips in April and 24 in May, 72 clips altogether. #### 72",
        "The train travels 120 km in 2 hours, so its speed is 60 km per hour. #### 60",
    ]
    result = generation_metrics(answers, answers)
    assert result.bleu == pytest.approx(100.0)
    assert (result.rouge1, result.rouge2, result.rougeL) == (1.0, 1.0, 1.0)
    assert result.exact_match == 1.0


def test_different_answers_score_lower_and_exact_match_reads_the_final_number():
    predictions = ["She sold 72 clips in total.", "The speed is 59 km/h."]
    references = ["Natalia sold 72 clips altogether. #### 72", "It goes 60 km per hour. #### 60"]
    result = generation_metrics(predictions, references)
    assert 0 < result.bleu < 100 and 0 < result.rouge1 < 1
    assert result.exact_match == 0.5


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("#### 1,234", "1234"),
        ("so $18.00 in total", "18"),
        ("x = -3 and then 4.50", "4.5"),
        ("none", None),
    ],
)
def test_final_number(text, number):
    assert final_number(text) == number


def test_choice_completion_acc_and_acc_norm(tokenizer):
    """Uniform model: acc picks the ending with fewest tokens, acc_norm the most characters per token."""
    scorer = Scorer(uniform_lm(len(tokenizer)), tokenizer)
    endings = ["a b c d e", "extraordinarily", "go"]
    items = [
        ChoiceItem("h0", "She opened the door and", endings, 2),
        ChoiceItem("h1", "Then", endings, 1),
    ]
    tokens = [len(scorer.encode_pair("Then", " " + e)[1]) for e in endings]
    fewest = min(range(3), key=lambda i: (tokens[i], i))
    densest = max(range(3), key=lambda i: -tokens[i] / len(endings[i]))
    result = choice_completion(scorer, items)
    assert [p["predicted"] for p in result.predictions] == [fewest, fewest]
    assert [p["predicted_norm"] for p in result.predictions] == [densest, densest]
    assert result.accuracy.value == sum(fewest == item.label for item in items) / 2
    assert result.accuracy_norm.value == sum(densest == item.label for item in items) / 2


def test_choice_items_file_errors_name_line_and_field(tmp_path):
    path = tmp_path / "items.jsonl"
    good = {"context": "c", "endings": ["x", "y"], "label": "1"}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "label": 5}) + "\n")
    with pytest.raises(RecordError, match=r"items.jsonl:2: field 'label'"):
        read_choice_items(path)
    path.write_text(json.dumps(good) + "\n")
    assert read_choice_items(path)[0].label == 1


def test_the_reward_task_scores_in_float32_when_the_scorer_runs_in_bf16(tmp_path, tiny_model_dir):
    """A reward is a small difference of two summed log-probs: the eval settings run it in
    float32 (``reward_dtype``), through the same lazily loaded fp32 model as MCQA rechecks."""
    from tutorlm.data.formats import write_records
    from tutorlm.evaluate.config import EvalConfig
    from tutorlm.evaluate.runner import TaskSpec, float32_rechecker, run_task

    pairs = [pair(i, f"yes, {i} times", f"no, not {i}", "rg", "rules") for i in range(6)]
    path = tmp_path / "prefs.test.jsonl"
    write_records(path, pairs)
    spec = TaskSpec("reward", "reward", [path])
    reference = Scorer.from_spec(tiny_model_dir, dtype="float32")

    def margins(dtype: str, settings: EvalConfig) -> list[float]:
        scorer = Scorer.from_spec(tiny_model_dir, dtype=dtype)
        out = tmp_path / f"{dtype}-{settings.reward_dtype}"
        out.mkdir()
        run_task(
            spec,
            scorer,
            settings,
            seed=0,
            reference=reference,
            out_dir=out,
            predictions_name="unused",
            recheck=float32_rechecker(tiny_model_dir, scorer),
        )
        rows = [json.loads(line) for line in (out / "pairs.reward.jsonl").read_text().splitlines()]
        return [row["reward_chosen"] - row["reward_rejected"] for row in rows]

    fp32 = margins("float32", EvalConfig())
    assert margins("bfloat16", EvalConfig()) == fp32  # default reward_dtype: float32
    assert margins("bfloat16", EvalConfig(reward_dtype="auto")) != fp32  # bf16 throughout
