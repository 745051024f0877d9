"""Evaluation beyond one process and one device.

- Data parallel: each process scores the batches dealt to it and the results are
  gathered in item order, identical to one process. In-process tests run the
  "processes" as threads whose gather is a barrier (:class:`ThreadProcesses`); the
  slow test launches ``tutorlm eval files`` as two real gloo processes with
  ``accelerate launch --multi_gpu`` (on a machine without GPUs it starts two CPU
  processes; ``--cpu`` would start one, see ``test_train_processes.py``).
- ``device_map``: a model spread by accelerate's big-model dispatch, here over the
  CPU and the disk (``max_memory`` smaller than the model), scores as the plain load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from eval_fakes import FakeLM

from tutorlm.cli import main
from tutorlm.data.formats import write_records
from tutorlm.evaluate.config import EvalConfig
from tutorlm.evaluate.parallel import ALONE, ParallelError, Processes
from tutorlm.evaluate.runner import TaskSpec, run_tasks
from tutorlm.evaluate.scorer import Scorer, ScorerError

# -- dealing batches ----------------------------------------------------------------------


@pytest.mark.parametrize(("items", "count", "size"), [(10, 2, 3), (7, 3, 2), (1, 2, 4), (0, 2, 2)])
def test_every_item_is_dealt_once_in_whole_batches(items, count, size):
    shares = [Processes(count, index).deal(list(range(items)), size) for index in range(count)]
    assert sorted(i for share in shares for i in share) == list(range(items))
    batches = [list(range(start, min(start + size, items))) for start in range(0, items, size)]
    for index, share in enumerate(shares):
        assert share == [i for batch in batches[index::count] for i in batch]
        assert Processes(count, index).dealt(items, size) == len(share)


def test_one_item_with_two_processes_leaves_the_second_idle():
    assert Processes(2, 0).deal(["q"], 8) == ["q"]
    assert Processes(2, 1).deal(["q"], 8) == []
    assert ALONE.deal(["a", "b"], 1) == ["a", "b"]
    assert ALONE.fill([1, None]) == [1, None] and ALONE.gather("x") == ["x"]


# -- processes as threads -------------------------------------------------------------------


@dataclass
class Board:
    """What the threads exchange: one slot per process and a barrier."""

    count: int
    slots: list = field(default_factory=list)
    barrier: threading.Barrier | None = None

    def __post_init__(self):
        self.slots = [None] * self.count
        self.barrier = threading.Barrier(self.count)


@dataclass(frozen=True)
class ThreadProcesses(Processes):
    """Processes whose gather is a barrier between threads of this test."""

    board: Board | None = None

    def gather(self, value) -> list:
        self.board.slots[self.index] = value
        self.board.barrier.wait()
        everything = list(self.board.slots)
        self.board.barrier.wait()  # nobody overwrites a slot before all have read it
        return everything

    def wait(self) -> None:
        self.board.barrier.wait()


def side_by_side(count: int, work) -> list:
    """``work(processes)`` in ``count`` threads; their return values, in process order."""
    board = Board(count)
    outcomes: list = [None] * count

    def run(index: int) -> None:
        try:
            outcomes[index] = work(ThreadProcesses(count, index, board))
        except BaseException as error:  # a failing thread must not hang the others
            board.barrier.abort()
            outcomes[index] = error

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return outcomes


REQUESTS = [
    ("The capital of France is", " Paris"),
    ("The capital of France is", " Lyon"),
    ("Question: 2 + 2 =\nAnswer:", " A"),
    ("Question: 2 + 2 =\nAnswer:", " B"),
    ("Question: 2 + 2 =\nAnswer:", " C"),
    ("Force equals mass times", " acceleration, always"),
    ("Force equals mass times", " velocity, sometimes not"),
    ("", "An empty context"),
    ("A short one", " more words that follow it here"),
]
TEXTS = ["Newton's laws describe motion. " * 6, "Energy is conserved.", "A body at rest. " * 3]


@pytest.fixture(scope="module")
def tiny_scorers(tiny_model_dir):
    """Three float32 copies of the tiny model (one per thread: no shared module state)."""
    return [Scorer.from_spec(tiny_model_dir, dtype="float32", batch_size=2) for _ in range(3)]


def _as(scorer: Scorer, processes: Processes) -> Scorer:
    """``scorer``'s model and tokenizer, scoring as ``processes``."""
    return Scorer(scorer.model, scorer.tokenizer, batch_size=2, processes=processes)


@pytest.mark.parametrize("count", [2, 3])
def test_processes_score_what_one_process_scores(tiny_scorers, count):
    alone = _as(tiny_scorers[0], ALONE)
    expected = (
        alone.loglikelihood(REQUESTS),
        alone.loglikelihood_rolling(TEXTS, window=12, stride=5),
    )

    def work(processes):
        scorer = _as(tiny_scorers[processes.index], processes)
        return (
            scorer.loglikelihood(REQUESTS),
            scorer.loglikelihood_rolling(TEXTS, window=12, stride=5),
        )

    assert side_by_side(count, work) == [expected] * count


def test_each_process_runs_only_its_share_of_the_batches(smollm_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm_tokenizer_dir)
    models = [FakeLM(len(tokenizer)) for _ in range(3)]
    texts = [f"text number {i} " * (i + 1) for i in range(5)]
    alone = Scorer(models[0], tokenizer, batch_size=2).loglikelihood_rolling(texts, window=8)
    rows_alone = sum(batch for batch, _ in models[0].calls)

    def score(processes):
        model = models[1 + processes.index]
        scorer = Scorer(model, tokenizer, batch_size=2, processes=processes)
        return scorer.loglikelihood_rolling(texts, window=8)

    assert side_by_side(2, score) == [alone, alone]
    first, second = (sum(batch for batch, _ in model.calls) for model in models[1:])
    assert first > 0 and second > 0 and first + second == rows_alone


def test_one_item_with_two_processes_scores_and_gathers(tiny_scorers):
    expected = _as(tiny_scorers[0], ALONE).loglikelihood(REQUESTS[:1])

    def work(processes):
        return _as(tiny_scorers[processes.index], processes).loglikelihood(REQUESTS[:1])

    assert side_by_side(2, work) == [expected, expected]


MCQA = [
    {
        "id": f"q{i}",
        "source": "test",
        "question": f"What is {i} + {i % 3}?",
        "choices": [str(i + i % 3), str(i), str(i + 7), "none of these"],
        "answer": i % 4,
        "subject": ["physics", "mathematics"][i % 2],
    }
    for i in range(7)
]


def _pair(i: int) -> dict:
    return {
        "id": f"p{i}",
        "source": "test",
        "prompt": [{"role": "user", "content": f"Is {i} even?"}],
        "chosen": [{"role": "assistant", "content": "yes" if i % 2 == 0 else "no"}],
        "rejected": [{"role": "assistant", "content": f"maybe {i}, who knows"}],
    }


@pytest.fixture(scope="module")
def eval_files(tmp_path_factory):
    """Small MCQA (7 questions: an odd count), preference and text files."""
    folder = tmp_path_factory.mktemp("eval-files")
    write_records(folder / "mcqa.jsonl", MCQA)
    write_records(folder / "prefs.jsonl", [_pair(i) for i in range(5)])
    (folder / "notes.md").write_text("A force changes the motion of a body. " * 8)
    (folder / "more.txt").write_text("Energy is neither created nor destroyed.")
    return folder


def test_run_tasks_as_two_processes_writes_once_what_one_process_writes(
    tiny_model_dir, tiny_scorers, eval_files, tmp_path
):
    settings = EvalConfig(batch_size=2, bootstrap_resamples=50, perplexity_window=16)
    specs = [
        TaskSpec("mcqa", "mcqa", [eval_files / "mcqa.jsonl"]),
        TaskSpec("reward", "reward", [eval_files / "prefs.jsonl"]),
        TaskSpec("perplexity", "perplexity", [eval_files]),
    ]

    def run(processes, out):
        scorer = _as(tiny_scorers[processes.index], processes)
        return run_tasks(tiny_model_dir, specs, settings, out, scorer=scorer, reference=scorer)

    alone = run(ALONE, tmp_path / "alone")
    both = side_by_side(2, lambda processes: run(processes, tmp_path / f"p{processes.index}"))
    assert both[0]["tasks"].keys() == alone["tasks"].keys()
    assert [_stable(r) for r in both] == [_stable(alone) | {"processes": 2}] * 2
    for name in ("predictions.jsonl", "pairs.reward.jsonl"):
        assert (tmp_path / "p0" / name).read_bytes() == (tmp_path / "alone" / name).read_bytes()
    assert list((tmp_path / "p1").iterdir()) == []  # only the main process writes


#: Fields that differ between two runs of one process too: time, threads, paths.
VOLATILE = {"created", "out_dir", "threads", "seconds", "questions_per_second", "wall_seconds"}


def _stable(results: dict) -> dict:
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in VOLATILE}
        return value

    return strip(results)


# -- the real launcher ----------------------------------------------------------------------


def _eval_files(model_dir: Path, reference: Path, files: Path, out: Path) -> list[str]:
    return [
        *("-m", "tutorlm", "eval", "files", "--model", str(model_dir), "--out", str(out)),
        *("--mcqa", str(files / "mcqa.jsonl")),
        *("--prefs", str(files / "prefs.jsonl"), "--ref", str(reference)),
        *("--perplexity", str(files), "--perplexity-window", "16", "--perplexity-stride", "8"),
        *("--dtype", "bfloat16", "--recheck-margin", "0.25", "--batch-size", "2"),
        *("--bootstrap-resamples", "100", "--threads", "1", "--no-progress"),
    ]


@pytest.mark.slow
def test_accelerate_launch_two_processes_equals_one(
    tiny_model_dir, smollm_tokenizer_dir, eval_files, tmp_path
):
    """``tutorlm eval files`` in bf16 (close calls re-checked in float32, the reward in
    float32 against another model) as two gloo processes and as one: same files."""
    from conftest import build_tiny_llama

    reference = build_tiny_llama(smollm_tokenizer_dir, tmp_path / "reference", seed=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    accelerate = Path(sys.executable).parent / "accelerate"
    launch = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2"]
    one, two = tmp_path / "one", tmp_path / "two"
    launched = subprocess.Popen(
        [*launch, *_eval_files(tiny_model_dir, reference, eval_files, two)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:  # the one-process run meanwhile, in this process, one thread as each of the two
        assert main(_eval_files(tiny_model_dir, reference, eval_files, one)[2:]) == 0
        printed, stderr = launched.communicate(timeout=240)
    finally:
        launched.kill()
    assert launched.returncode == 0, stderr[-3000:]
    assert printed.count("results: ") == 1  # printed by the main process only
    first, second = (json.loads((out / "results.json").read_text()) for out in (two, one))
    assert (first["processes"], second["processes"]) == (2, 1)
    assert 0 < first["tasks"]["mcqa"]["rechecked"] < len(MCQA)  # some close calls, not all
    assert first["tasks"]["reward"]["tie_rate"] < 1  # a reference unlike the policy
    assert _stable(first) | {"processes": 1} == _stable(second)
    for name in ("predictions.jsonl", "pairs.reward.jsonl"):
        assert (two / name).read_bytes() == (one / name).read_bytes()
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())


# -- one model over several devices -----------------------------------------------------------


def _model_bytes(model_dir: Path) -> int:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def test_device_map_auto_offloads_to_disk_and_scores_as_the_plain_load(
    tiny_model_dir, tiny_scorers
):
    """``max_memory`` as large as the weights leaves no room for accelerate's reserve
    for the largest layer, so some modules stay on disk and load at each pass."""
    memory = {"cpu": _model_bytes(tiny_model_dir)}
    spread = Scorer.from_spec(
        tiny_model_dir, dtype="float32", device_map="auto", max_memory=memory, batch_size=2
    )
    placed = set(spread.model.hf_device_map.values())
    assert placed == {"cpu", "disk"}
    assert spread.device == "cpu"
    plain = _as(tiny_scorers[0], ALONE)
    assert spread.loglikelihood(REQUESTS) == plain.loglikelihood(REQUESTS)
    rolled = spread.loglikelihood_rolling(TEXTS, window=12, stride=5)
    assert rolled == plain.loglikelihood_rolling(TEXTS, window=12, stride=5)
    sibling = spread.sibling(tiny_model_dir, dtype="float32")  # the float32 re-check, the reference
    assert sibling.model.hf_device_map == spread.model.hf_device_map


def test_a_model_wholly_on_disk_takes_its_inputs_on_the_cpu(tiny_model_dir, tiny_scorers):
    memory = {"cpu": _model_bytes(tiny_model_dir) // 2}
    spread = Scorer.from_spec(tiny_model_dir, dtype="float32", device_map="auto", max_memory=memory)
    assert set(spread.model.hf_device_map.values()) == {"disk"}
    assert {p.device.type for p in spread.model.parameters()} == {"meta"}
    assert spread.device == "cpu"
    assert spread.loglikelihood(REQUESTS[:3]) == _as(tiny_scorers[0], ALONE).loglikelihood(
        REQUESTS[:3]
    )


def test_eval_files_with_device_map_flags_writes_what_the_plain_load_writes(
    tiny_model_dir, eval_files, tmp_path
):
    bytes_ = _model_bytes(tiny_model_dir)
    common = [*("eval", "files", "--model", str(tiny_model_dir), "--dtype", "float32")]
    common += ["--mcqa", str(eval_files / "mcqa.jsonl"), "--bootstrap-resamples", "20"]
    plain, spread = tmp_path / "plain", tmp_path / "spread"
    assert main([*common, "--out", str(plain)]) == 0
    assert (
        main(
            [*common, "--out", str(spread), "--device-map", "auto"]
            + ["--max-memory", f"cpu={bytes_}"]
        )
        == 0
    )
    results = json.loads((spread / "results.json").read_text())
    assert set(results["device_map"].values()) == {"cpu", "disk"}
    assert results["settings"]["max_memory"] == {"cpu": bytes_}
    assert "device_map" not in json.loads((plain / "results.json").read_text())
    name = "predictions.jsonl"
    assert (spread / name).read_bytes() == (plain / name).read_bytes()


def test_device_map_takes_no_single_device(tiny_model_dir):
    from tutorlm.models import load_causal_lm

    with pytest.raises(ValueError, match="device or device_map, not both"):
        load_causal_lm(tiny_model_dir, device="cpu", device_map="auto")
    with pytest.raises(ValueError, match="max_memory needs a device_map"):
        load_causal_lm(tiny_model_dir, max_memory={"cpu": "1GB"})
    with pytest.raises(ScorerError, match="cannot be combined with device 'cpu'"):
        Scorer.from_spec(tiny_model_dir, device="cpu", device_map="auto")


def test_device_map_under_several_processes_fails_before_loading(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr("tutorlm.models.load_model", lambda *a, **k: pytest.fail("loaded"))
    settings = EvalConfig(device_map="auto")
    with pytest.raises(ParallelError, match="runs in one process, but 2 were launched"):
        run_tasks("some-model", [], settings, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_max_memory_reads_a_flag_or_a_mapping():
    assert EvalConfig(max_memory="0=70GiB, cpu=200GiB").max_memory == {0: "70GiB", "cpu": "200GiB"}
    assert EvalConfig(max_memory={"1": "5", "disk": "1GB"}).max_memory == {1: 5, "disk": "1GB"}
    for bad in ("gpu=1GB", "cpu"):
        with pytest.raises(ValueError, match="GPU index|DEVICE=SIZE"):
            EvalConfig(max_memory=bad)


def test_several_processes_each_take_the_gpu_of_their_local_rank(monkeypatch):
    from tutorlm.hardware import HardwareError, process_device

    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 4)
    assert process_device("auto") == "cuda"
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "6")
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert process_device("auto") == process_device("cuda") == "cuda:2"
    assert process_device("cpu") == "cpu"
    with pytest.raises(HardwareError, match="each takes the GPU of its local rank"):
        process_device("cuda:1")
