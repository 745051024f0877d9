"""The judge against a scripted OpenAI-compatible server: both orders, position bias
cancelled, unparseable output re-asked then counted, exact win rates and agreement
with keys, the run's record, and ``tutorlm judge`` end to end."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tutorlm.cli import main
from tutorlm.evaluate.judge import (
    JudgeConfig,
    JudgeError,
    Pair,
    judge_agreement,
    judge_messages,
    judge_pairs,
    judge_prompt_text,
    judge_strength,
    parse_verdict,
    summarize,
)
from tutorlm.evaluate.judge_backends import EndpointBackend
from tutorlm.evaluate.judge_files import (
    judge_eval_dirs,
    judge_files,
    pair_replies,
    read_replies,
)

_REPLIES = re.compile(r"Reply A:\n(.*?)\n\nReply B:\n(.*?)\n\nAnswer in", re.S)


def shown(chat: list[dict]) -> tuple[str, str]:
    """The replies a judge chat shows as A and as B."""
    return _REPLIES.search(chat[-1]["content"]).groups()


def picks_right(chat: list[dict], temperature: float) -> str:
    """A consistent judge: prefers the reply that says RIGHT, ties when both or neither do."""
    first, second = shown(chat)
    a, b = "RIGHT" in first, "RIGHT" in second
    verdict = "A" if a and not b else "B" if b and not a else "tie"
    return f"Verdict: {verdict}\nReason: the {verdict} reply states the right value."


def always_a(chat: list[dict], temperature: float) -> str:
    return "**Verdict:** A\nReason: the first reply is better."


class FakeJudge:
    """An OpenAI-compatible server on 127.0.0.1 whose replies come from ``script(chat,
    temperature)``; ``fail_first`` requests get 503 first. ``requests`` holds the bodies
    and ``headers`` the Authorization header of each chat request."""

    def __init__(self, script, *, fail_first: int = 0, status: int = 503):
        self.script, self.fail_first, self.status = script, fail_first, status
        self.requests: list[dict] = []
        self.headers: list[str | None] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "fake-judge"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    if fake.fail_first > 0:
                        fake.fail_first -= 1
                        self._send(fake.status, {"error": {"message": "scripted failure"}})
                        return
                    fake.requests.append(body)
                    fake.headers.append(self.headers.get("Authorization"))
                text = fake.script(body["messages"], body["temperature"])
                self._send(
                    200,
                    {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]},
                )

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeJudge:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def config(url: str, **changes) -> JudgeConfig:
    return JudgeConfig(url=url, model="fake-judge", backoff_s=0, concurrency=2, **changes)


def run_pairs(script, pairs, **changes):
    with FakeJudge(script) as fake:
        rows = judge_pairs(
            pairs, EndpointBackend(config(fake.url, **changes)), config(fake.url, **changes)
        )
    return rows, fake


PAIRS = [
    Pair("q1", "What is F = ma for m = 2 kg, a = 3 m/s^2?", "RIGHT: 6 N", "12 N"),
    Pair("q2", "Unit of charge?", "RIGHT: the coulomb", "the volt"),
    Pair("q3", "Derivative of x^2?", "RIGHT: 2x", "x"),
    Pair("q4", "Speed of light?", "about 3e5 m/s", "RIGHT: about 3e8 m/s"),
    Pair("q5", "What is pi to two places?", "RIGHT: 3.14", "RIGHT: 3.14, roughly"),
]


@pytest.mark.parametrize(
    ("text", "verdict", "reason"),
    [
        ("Verdict: A\nReason: it is right.", "A", "it is right."),
        ("**Verdict:** Tie.\n**Reason:** both fine", "tie", "both fine"),
        ("verdict - reply b", "B", ""),
        ("Verdict: A, B or tie\nReason: one sentence", None, "one sentence"),
        ("Verdict: A or B", None, ""),
        ("I prefer A because it is right.", None, ""),
        ("", None, ""),
    ],
)
def test_parse_verdict_reads_only_the_strict_format(text, verdict, reason):
    assert parse_verdict(text) == (verdict, reason)


def test_messages_show_the_question_both_replies_and_the_reference():
    chat = judge_messages("Q?", "first one", "second one", reference="ref answer")
    assert shown(chat) == ("first one", "second one")
    assert "Question:\nQ?\n" in chat[1]["content"] and "ref answer" in chat[1]["content"]
    assert "Reference answer" not in judge_messages("Q?", "x", "y")[1]["content"]


def test_a_consistent_judge_is_asked_both_orders_and_gives_exact_win_rate():
    rows, fake = run_pairs(picks_right, PAIRS)
    assert len(fake.requests) == 2 * len(PAIRS)
    seen = sorted(shown(body["messages"]) for body in fake.requests)
    expected = sorted(
        [(p.reply_a, p.reply_b) for p in PAIRS] + [(p.reply_b, p.reply_a) for p in PAIRS]
    )
    assert seen == expected
    assert [row["verdict"] for row in rows] == ["A", "A", "A", "B", "tie"]
    assert rows[3]["orders"]["BA"]["said"] == "A" and rows[3]["orders"]["BA"]["verdict"] == "B"
    summary = summarize(rows, resamples=200)
    win = summary["win_rate"]
    assert win["value"] == pytest.approx((1 + 1 + 1 + 0 + 0.5) / 5)
    assert win["low"] <= win["value"] <= win["high"] and win["n"] == 5
    assert summary["counts"] == {"A": 3, "B": 1, "tie": 1, "inconsistent": 0, "unparsed": 0}
    assert summary["inconsistent_rate"] == 0 and summary["reasks"] == 0
    assert summary["first_position_rate"] == 0.5  # 4 named wins in each order


def test_a_judge_that_always_says_a_is_cancelled_to_one_half():
    rows, _ = run_pairs(always_a, PAIRS)
    assert {row["verdict"] for row in rows} == {"inconsistent"}
    summary = summarize(rows, resamples=200)
    assert summary["win_rate"] == {"value": 0.5, "low": 0.5, "high": 0.5, "n": 5}
    assert summary["inconsistent_rate"] == 1.0 and summary["first_position_rate"] == 1.0


def test_unparseable_output_is_asked_again_hotter_then_counted():
    def greedy_garbles(chat, temperature):
        if "pi" in chat[-1]["content"]:
            return "I cannot decide."  # never parseable
        return picks_right(chat, temperature) if temperature > 0 else "A is nice"

    rows, fake = run_pairs(greedy_garbles, PAIRS, parse_retries=2, retry_temperature=0.9)
    assert [row["verdict"] for row in rows] == ["A", "A", "A", "B", "unparsed"]
    assert [len(rows[0]["orders"][o]["raw"]) for o in ("AB", "BA")] == [2, 2]
    assert len(rows[4]["orders"]["AB"]["raw"]) == 3  # first ask + 2 re-asks
    assert sorted({body["temperature"] for body in fake.requests}) == [0.0, 0.9]
    summary = summarize(rows, resamples=0)
    assert summary["judged"] == 4 and summary["counts"]["unparsed"] == 1
    assert summary["win_rate"]["value"] == 0.75
    assert summary["unparsed_rate"] == pytest.approx(0.2)
    assert summary["reasks"] == 4 * 2 + 2 * 2


def test_agreement_with_keys_is_exact():
    rows = [
        {"id": "a", "verdict": "A"},  # key: A right -> agrees
        {"id": "b", "verdict": "A"},  # key: B right -> disagrees
        {"id": "c", "verdict": "tie"},  # key: A right -> half
        {"id": "d", "verdict": "inconsistent"},  # key: B right -> half
        {"id": "e", "verdict": "unparsed"},  # key: A right -> counted, left out
        {"id": "f", "verdict": "A"},  # both right: cannot tell
        {"id": "g", "verdict": "B"},  # both wrong: cannot tell
        {"id": "h", "verdict": "A"},  # ungraded
    ]
    keys = {
        "a": (True, False), "b": (False, True), "c": (True, False), "d": (False, True),
        "e": (True, False), "f": (True, True), "g": (False, False), "h": (None, True),
    }  # fmt: skip
    result = judge_agreement(rows, keys, resamples=200)
    assert result["agreement"]["value"] == pytest.approx((1 + 0 + 0.5 + 0.5) / 4)
    assert result["agreement"]["n"] == 4
    assert (result["prefers_key"], result["prefers_other"], result["undecided"]) == (1, 1, 2)
    assert (result["unparsed"], result["both_right"], result["both_wrong"]) == (1, 1, 1)


def test_strength_labels_the_bundled_model_and_a_coin_like_judge_weak():
    good = {"name": "k", "agreement": {"value": 0.9, "low": 0.8, "high": 1.0, "n": 40}}
    coin = {"name": "k", "agreement": {"value": 0.6, "low": 0.45, "high": 0.75, "n": 40}}
    assert judge_strength("big-judge", [good]) == ("measured", [])
    assert judge_strength("big-judge", [coin])[0] == "weak"
    assert judge_strength("smollm2-135m-instruct", [good])[0] == "weak"
    assert judge_strength("bundled:smollm2-135m-instruct", [])[0] == "weak"
    assert judge_strength("big-judge", [])[0] == "unmeasured"


def test_the_endpoint_retries_busy_servers_sends_the_key_and_fails_clearly(monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", "sekrit")
    with FakeJudge(picks_right, fail_first=2) as fake:
        backend = EndpointBackend(config(fake.url, api_key_env="JUDGE_TEST_KEY", retries=2))
        assert backend.complete([judge_messages("q", "RIGHT", "no")], temperature=0) == [
            "Verdict: A\nReason: the A reply states the right value."
        ]
        assert fake.headers == ["Bearer sekrit"]
    with FakeJudge(picks_right, fail_first=3) as fake, pytest.raises(JudgeError, match="3 times"):
        EndpointBackend(config(fake.url, retries=2)).complete(
            [judge_messages("q", "a", "b")], temperature=0
        )
    with (
        FakeJudge(picks_right, fail_first=1, status=404) as fake,
        pytest.raises(JudgeError, match="404"),
    ):
        EndpointBackend(config(fake.url, retries=5)).complete(
            [judge_messages("q", "a", "b")], temperature=0
        )
    monkeypatch.delenv("JUDGE_TEST_KEY")
    with pytest.raises(JudgeError, match=r"\$JUDGE_TEST_KEY is not set"):
        EndpointBackend(config("http://127.0.0.1:9", api_key_env="JUDGE_TEST_KEY"))


def test_without_a_model_the_endpoint_takes_the_first_it_lists():
    with FakeJudge(picks_right) as fake:
        assert EndpointBackend(JudgeConfig(url=fake.url + "/v1/")).model == "fake-judge"


def _write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _tutor_rows(marks: dict[str, bool], notes: bool) -> list[dict]:
    """Tutor-predictions rows: the served tutor's prompt (notes before "Question:" when
    ``notes``), the reply, the grader's verdict."""
    rows = []
    for key, right in marks.items():
        question = f"What is item {key}?"
        user = f"[1] physics.md > Forces\nF = ma.\n\nQuestion: {question}" if notes else question
        prompt = [
            {"role": "system", "content": "You are a tutor."},
            {"role": "user", "content": user},
        ]
        reply = f"RIGHT: item {key} is 6 N." if right else f"item {key} is 12 N."
        rows.append(
            {
                "id": key,
                "task": "tutor:grounded",
                "prompt": prompt,
                "reply": reply,
                "verdict": right,
            }
        )
    return rows


def test_reply_files_are_read_and_paired_by_id(tmp_path):
    a = _write(
        tmp_path / "a.jsonl", _tutor_rows({"x": True, "y": False, "only-a": True}, notes=True)
    )
    b = _write(
        tmp_path / "b.jsonl",
        [{"id": "y", "prediction": "RIGHT", "reference": "6 N"}, {"id": "x", "response": "no"}],
    )
    replies = read_replies(a)
    assert replies["x"]["question"] == "What is item x?" and replies["x"]["verdict"] is True
    pairs = pair_replies(replies, read_replies(b))
    assert [(p.id, p.reply_b, p.reference) for p in pairs] == [
        ("x", "no", None),
        ("y", "RIGHT", "6 N"),
    ]
    _write(tmp_path / "bad.jsonl", [{"id": "z", "text": "no reply field"}])
    with pytest.raises(JudgeError, match="no reply field"):
        read_replies(tmp_path / "bad.jsonl")
    with pytest.raises(JudgeError, match="no question in either file"):
        pair_replies({"z": {"question": None, "reply": "a", "reference": None, "verdict": None}},
                     {"z": {"question": None, "reply": "b", "reference": None, "verdict": None}})  # fmt: skip


def test_judge_files_writes_the_record_pairs_and_report(tmp_path):
    marks_a = {"1": True, "2": True, "3": True, "4": False, "5": True}
    marks_b = {"1": False, "2": False, "3": True, "4": True, "5": False}
    a = _write(tmp_path / "with.jsonl", _tutor_rows(marks_a, notes=True))
    b = _write(tmp_path / "without.jsonl", _tutor_rows(marks_b, notes=False))
    with FakeJudge(picks_right) as fake:
        result = judge_files(
            a, b, config(fake.url), tmp_path / "out", resamples=200, echo=lambda _: None
        )
        assert all("[1] physics.md" not in body["messages"][1]["content"] for body in fake.requests)
    assert result["summary"]["counts"] == {
        "A": 3,
        "B": 1,
        "tie": 1,
        "inconsistent": 0,
        "unparsed": 0,
    }
    (agreement,) = result["agreements"]
    assert agreement["agreement"]["value"] == 1.0 and agreement["agreement"]["n"] == 4
    assert agreement["both_right"] == 1 and result["strength"] == "measured"
    record = json.loads((tmp_path / "out" / "judge.json").read_text())["judge"]
    assert record["model"] == "fake-judge" and record["endpoint"] == fake.url + "/v1"
    assert record["prompt"] == judge_prompt_text()
    assert record["prompt_sha256"] == hashlib.sha256(judge_prompt_text().encode()).hexdigest()
    assert record["date"] and "api_key" not in json.dumps(record["settings"]).replace(
        "api_key_env", ""
    )
    pairs = [
        json.loads(line)
        for line in (tmp_path / "out" / "judge.pairs.jsonl").read_text().splitlines()
    ]
    assert [p["id"] for p in pairs] == ["1", "2", "3", "4", "5"]
    assert pairs[0]["orders"]["AB"]["raw"] == [
        "Verdict: A\nReason: the A reply states the right value."
    ]
    assert pairs[0]["orders"]["BA"]["reason"] == "the B reply states the right value."
    report = (tmp_path / "out" / "judge.md").read_text()
    assert "| win rate of with over without [95 % CI] | 0.700 [" in report
    assert "Weak judge" not in report


def test_judge_eval_dirs_judges_each_item_once_against_every_key(tmp_path):
    for name, marks in (
        ("m2", {"1": True, "2": True, "3": False}),
        ("m0", {"1": False, "2": True, "3": True}),
    ):
        folder = tmp_path / name
        folder.mkdir()
        rows = _tutor_rows(marks, notes=True)
        _write(folder / "predictions.tutor-grounded.jsonl", rows)
        cited = [{**row, "task": "tutor:citation_precision", "verdict": True} for row in rows]
        _write(folder / "predictions.tutor-citation_precision.jsonl", cited)
    with FakeJudge(picks_right) as fake:
        result = judge_eval_dirs(
            config(fake.url), tmp_path / "m2", tmp_path / "m0", tmp_path / "judge",
            labels=("M2", "M0"), resamples=0, echo=lambda _: None,
        )  # fmt: skip
        assert len(fake.requests) == 2 * 3
    names = [entry["name"] for entry in result["agreements"]]
    assert names == ["predictions.tutor-grounded"]  # citation: both right everywhere
    assert result["agreements"][0]["agreement"]["value"] == 1.0
    assert result["summary"]["win_rate"]["value"] == pytest.approx(0.5)
    assert (
        judge_eval_dirs(
            config(fake.url), tmp_path, tmp_path / "m0", tmp_path / "x", echo=lambda _: None
        )
        is None
    )


def test_cli_judge_end_to_end_labels_the_bundled_model_weak(tmp_path, capsys):
    a = _write(tmp_path / "a.jsonl", _tutor_rows({"1": True, "2": False}, notes=True))
    b = _write(tmp_path / "b.jsonl", _tutor_rows({"1": False, "2": True}, notes=False))
    with FakeJudge(always_a) as fake:
        status = main(
            ["judge", str(a), str(b), "--judge-url", fake.url, "--judge-model", "smollm2-135m-instruct",
             "--out", str(tmp_path / "out"), "--labels", "with notes", "without", "--backoff-s", "0"]
        )  # fmt: skip
    assert status == 0
    printed = capsys.readouterr().out
    assert "**Weak judge**: the bundled 135M model is too small to judge" in printed
    assert "| win rate of with notes over without [95 % CI] | 0.500 [0.500, 0.500] |" in printed
    result = json.loads((tmp_path / "out" / "judge.json").read_text())
    assert result["judge"]["model"] == "smollm2-135m-instruct" and result["strength"] == "weak"
    assert result["agreements"][0]["undecided"] == 2


def test_cli_judge_needs_a_url_or_a_model(tmp_path, capsys):
    a = _write(tmp_path / "a.jsonl", [{"id": "1", "question": "q", "reply": "r"}])
    assert main(["judge", str(a), str(a)]) == 1
    assert "--judge-url" in capsys.readouterr().err


def test_a_recipes_judge_compares_m2_with_m0_and_the_report_shows_it(tmp_path):
    """With ``eval.judge`` set, the M2 evaluation stage judges M2's tutor replies
    against M0's; the run report carries the judge's table."""
    from tutorlm.pipeline.report import _judge
    from tutorlm.pipeline.stages import _judge_m2_against_m0
    from tutorlm.recipe import recipe_from_dict

    with FakeJudge(picks_right) as fake:
        recipe = recipe_from_dict(
            {"name": "j", "run_root": str(tmp_path), "eval": {"judge": {"url": fake.url}}}
        )
        for label, marks in (("M2", {"1": True, "2": True}), ("M0", {"1": False, "2": True})):
            folder = recipe.layout.eval_dir(label)
            folder.mkdir(parents=True)
            _write(folder / "predictions.tutor-grounded.jsonl", _tutor_rows(marks, notes=True))
        _judge_m2_against_m0(recipe)
        assert len(fake.requests) == 2 * 2
    written = json.loads((recipe.layout.eval_dir("judge-m2-m0") / "judge.json").read_text())
    assert written["agreements"][0]["agreement"]["value"] == 1.0
    section = _judge(recipe)
    assert section.title == "Judge" and "### M2 against M0" in section.markdown


def test_the_rag_stage_judges_answers_with_notes_against_without(tmp_path, tiny_model_dir):
    """With ``eval.judge`` set, a model answers the held-out notes questions with its
    retrieved notes and without; the judge compares the two sets and its agreement
    with the grounded grader is measured on them."""
    from tutorlm.evaluate.ablations import judge_retrieval
    from tutorlm.evaluate.scorer import Scorer
    from tutorlm.pipeline.report import _judge
    from tutorlm.recipe import recipe_from_dict

    with FakeJudge(always_a) as fake:
        recipe = recipe_from_dict(
            {
                "name": "rj",
                "run_root": str(tmp_path),
                "rag": {"mode": "bm25"},
                "eval": {
                    "judge": {"url": fake.url},
                    "tutor_limit": 2,
                    "tutor_max_new_tokens": 3,
                    "bootstrap_resamples": 10,
                },
            }
        )
        scorer = Scorer.from_spec(str(tiny_model_dir), dtype="float32", device="cpu")
        result = judge_retrieval(recipe, "M0", scorer, recipe.layout.rag_dir, log=lambda _: None)
        assert len(fake.requests) == 2 * 2  # two questions, both orders
    assert result["summary"]["win_rate"]["value"] == 0.5  # position bias cancels out
    folder = recipe.layout.rag_dir / "m0-judge"
    with_notes = (folder / "with-notes" / "predictions.tutor-grounded.jsonl").read_text()
    without = (folder / "without-notes" / "predictions.tutor-grounded.jsonl").read_text()
    assert "Course notes:" in with_notes and "Course notes:" not in without
    assert "M0: with notes against without" in _judge(recipe).markdown
