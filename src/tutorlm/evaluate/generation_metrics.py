"""Metrics of generated answers against references: BLEU-4, ROUGE-1/2/L, numeric exact match.

- **BLEU-4**: sacrebleu's corpus BLEU (``sacrebleu.corpus_bleu``, default 13a
  tokenizer, exponential smoothing), on the 0-100 scale: n-gram statistics are
  summed over the whole set before the geometric mean, as in ZEPHYR's Table 1 —
  not an average of sentence BLEUs.
- **ROUGE-1/2/L**: rouge-score's F-measure (``RougeScorer`` with the Porter
  stemmer), averaged over answers, on the 0-1 scale.
- **Exact match** (GSM8K-style sets): the final number of the answer equals the
  final number of the reference. The final number is the one after "####" when
  present (GSM8K's convention), else the last number in the text; commas, "$" and
  a trailing ".0" are ignored.

Identical strings give BLEU 100 and ROUGE 1.0 (tested).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from tutorlm.bulk import Generator, Sampling, TransformersGenerator
from tutorlm.errors import TutorlmError
from tutorlm.evaluate.scorer import Scorer

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> str | None:
    """The final numeric answer of a text, normalised ("1,234.0" -> "1234"), or None."""
    tail = text.rsplit("####", 1)[1] if "####" in text else text
    found = _NUMBER.findall(tail)
    if not found:
        return None
    value = found[-1].replace(",", "").replace("$", "")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return "0" if value in ("-0", "") else value


@dataclass
class GenerationResult:
    """Corpus BLEU-4 (0-100), mean ROUGE F (0-1), numeric exact match (0-1)."""

    bleu: float
    rouge1: float
    rouge2: float
    rougeL: float
    exact_match: float | None
    n: int
    samples: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "kind": "generation",
            "n": self.n,
            "bleu4": self.bleu,
            "rouge1": self.rouge1,
            "rouge2": self.rouge2,
            "rougeL": self.rougeL,
            "exact_match": self.exact_match,
        }


def generation_metrics(
    predictions: Sequence[str], references: Sequence[str], *, numeric: bool = True
) -> GenerationResult:
    """BLEU-4, ROUGE-1/2/L and (when ``numeric``) final-number exact match."""
    import sacrebleu
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise TutorlmError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise TutorlmError("generation metrics need at least one answer")
    bleu = sacrebleu.corpus_bleu(list(predictions), [list(references)]).score
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(reference, prediction)
        for name in totals:
            totals[name] += scores[name].fmeasure
    n = len(predictions)
    exact = None
    if numeric:
        hits = [
            final_number(p) is not None and final_number(p) == final_number(r)
            for p, r in zip(predictions, references, strict=True)
        ]
        exact = sum(hits) / n
    samples = [
        {"prediction": p, "reference": r} for p, r in zip(predictions, references, strict=True)
    ]
    return GenerationResult(
        bleu, totals["rouge1"] / n, totals["rouge2"] / n, totals["rougeL"] / n, exact, n, samples
    )


def split_conversation(record) -> tuple[list[dict], str]:
    """An SFT record's turns before its last assistant turn, and that turn's text."""
    turns = [{"role": m.role, "content": m.content} for m in record.messages]
    return turns[:-1], turns[-1]["content"]


def evaluate_generation(
    scorer: Scorer,
    records: Sequence,
    *,
    max_new_tokens: int = 256,
    chat: bool = True,
    numeric: bool = True,
    generator: Generator | None = None,
) -> GenerationResult:
    """Generate an answer to each SFT record's prompt and score it against its reference.

    The prompt is every turn before the record's last assistant turn, rendered
    through the chat template (``chat=True``, when the tokenizer has one) or as plain
    text; decoding is greedy. The answers come from ``generator`` (a
    :func:`tutorlm.bulk.open_generator` one, e.g. vLLM's), else from the transformers
    backend on the scorer's already loaded model, at the scorer's batch size.
    """
    prompts, references = [], []
    templated = chat and bool(getattr(scorer.tokenizer, "chat_template", None))
    for record in records:
        turns, reference = split_conversation(record)
        prompts.append(turns if templated else "".join(t["content"] + "\n" for t in turns))
        references.append(reference)
    if generator is None:
        generator = TransformersGenerator(
            scorer.model, scorer.tokenizer, batch_size=scorer.batch_size, progress=scorer.progress
        )
    outputs = generator.generate(prompts, Sampling(max_new_tokens=max_new_tokens), desc="generate")
    result = generation_metrics([o.text.strip() for o in outputs], references, numeric=numeric)
    for sample, record in zip(result.samples, records, strict=True):
        sample["id"] = record.id
    return result
