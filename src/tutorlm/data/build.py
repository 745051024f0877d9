"""``build_data``: the data stage, from a recipe's ``data`` section to files.

Order of work, for each output (a section, or an extra eval set):

1. every source is *checked* (files, columns, rules) before any row is converted;
2. each source's rows become examples, then records by the section's rules, then
   get the system turn and the ``max_tokens`` rule;
3. exact duplicates are removed across the output's sources;
4. each source is sampled (``cap``/``count``), the mix is split by ratio, whole
   groups at a time (:mod:`tutorlm.data.rules.mixing`). A source whose rejected
   answers a model writes (``corrupt: model``) is sampled *before* step 2 instead,
   so the model corrupts only the answers the build keeps;
5. train and val rows of every output are decontaminated against every eval set
   (each test split, each extra eval set, ``extra_eval_files``): a row that asks a
   test question verbatim always goes (``test_question``), then a row sharing a
   13-gram with an eval row (``decontaminated``);
6. each split is shuffled and written; ``manifest.json`` last.

Every drop is counted against its source and rule; a rule that leaves no rows is
an error naming it. The build is keyed by a fingerprint of what it reads (the
settings ``tutorlm.contract`` declares for the data stage, input files and package
versions, this code): when the fingerprint and the files on disk match the
manifest, a re-run does nothing. Every path comes from the run's layout.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tutorlm import __version__
from tutorlm.data.build_key import data_seed, fingerprint, up_to_date
from tutorlm.data.decontaminate import decontaminate
from tutorlm.data.examples import DataError, Row, Skip, SourceStats, require_rows
from tutorlm.data.formats import atomic_write_text, file_sha256, write_records
from tutorlm.data.rules import mixing
from tutorlm.data.rules.dedup import dedup_key
from tutorlm.data.rules.length import LengthRule, with_system
from tutorlm.data.rules.records import RecordBuilder, check_rules
from tutorlm.data.sources import open_reader
from tutorlm.layout import RunLayout

logger = logging.getLogger("tutorlm.data")


@dataclass
class Output:
    """A section or an extra eval set: its sources and how it is split."""

    stem: str
    kind: str
    sources: list
    ratios: dict[str, float]
    max_tokens: int | None
    eval_set: bool = False
    readers: list = field(default_factory=list)

    def file(self, split: str) -> str:
        return f"{self.stem}.jsonl" if self.eval_set else f"{self.stem}.{split}.jsonl"

    def is_eval(self, split: str) -> bool:
        return self.eval_set or split == "test"


def _outputs(recipe) -> list[Output]:
    data = recipe.data
    outputs = [
        Output(stem, kind, section.sources, section.split, section.max_tokens or data.max_tokens)
        for stem, kind, section in data.sections()
    ]
    for name, eval_set in data.eval_sets.items():
        outputs.append(
            Output(name, eval_set.kind, eval_set.sources, {"test": 1.0}, data.max_tokens, True)
        )
    if not outputs:
        raise DataError("the recipe's data section has no sft, prefs, mcqa or eval_sets")
    return outputs


def generates(source, kind: str) -> bool:
    """Whether a model writes part of this source's records (``corrupt: model`` on a
    preference source): such a source is sampled before it is converted."""
    corrupt = getattr(source, "corrupt", None)
    return kind == "preference" and corrupt is not None and corrupt.method == "model"


class _Progress:
    """A tqdm bar per source on stderr (silent when not wanted)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def bar(self, label: str):
        if not self.enabled:
            return None
        from tqdm import tqdm

        return tqdm(
            desc=label,
            unit="row",
            leave=False,
            file=sys.stderr,
            dynamic_ncols=True,
            disable=not sys.stderr.isatty(),
        )


class _Builder:
    def __init__(self, recipe, outputs: list[Output], progress: _Progress):
        self.recipe = recipe
        self.data = recipe.data
        self.seed = data_seed(recipe)
        self.outputs = outputs
        self.progress = progress
        self.stats: dict[str, SourceStats] = {}
        self._length_rules: dict[int, LengthRule] = {}
        self._tokenizer = None
        self._generators: dict[str, object] = {}

    def generator(self, spec: str):
        """The bulk generator of a model spec, opened once for the whole build (every
        source a model corrupts shares it) on the recipe's ``device``, with the engine
        of its ``generation`` block; the recipe's own model gets its chat template."""
        if spec not in self._generators:
            from tutorlm.bulk import open_generator

            template = self.recipe.chat_template if spec == self.recipe.model else None
            self._generators[spec] = open_generator(
                spec,
                device=self.recipe.device,
                config=self.recipe.generation,
                chat_template=template,
                seed=self.seed,
                progress=self.progress.enabled and sys.stderr.isatty(),
            )
        return self._generators[spec]

    def length_rule(self, max_tokens: int) -> LengthRule:
        if self._tokenizer is None:
            from tutorlm.models import load_tokenizer
            from tutorlm.templates import apply_template

            tokenizer = load_tokenizer(self.recipe.model)
            self._tokenizer = apply_template(tokenizer, self.recipe.chat_template)
        if max_tokens not in self._length_rules:
            self._length_rules[max_tokens] = LengthRule(
                self._tokenizer, max_tokens, self.data.over_length
            )
        return self._length_rules[max_tokens]

    def _record_builder(self, output: Output, reader) -> RecordBuilder:
        builder = RecordBuilder(
            reader.config,
            output.kind,
            seed=self.seed,
            section=output.stem,
            system_prompt=self.data.system_prompt,
            model=self.recipe.model,
        )
        if builder.corruptor is not None:
            builder.corruptor.generators = self.generator
        return builder

    def _examples(self, output: Output, reader) -> list:
        """A source's examples; an error naming the rule that left none."""
        stats = self.stats[reader.name]
        bar = self.progress.bar(f"{output.stem}:{reader.name}")
        try:
            examples = list(reader.examples(stats, bar))
        finally:
            if bar is not None:
                bar.close()
        if stats.read and not examples:
            rule = stats.dropped.most_common(1)[0][0]
            raise DataError(f"source '{reader.name}': rule '{rule}' left 0 of {stats.read} rows")
        return examples

    def _fit(self, output: Output, reader, row: Row) -> Row | None:
        """A row with the system turn and the ``max_tokens`` rule; ``None`` if dropped."""
        if reader.format and self.data.system_prompt and output.kind != "mcqa":
            row = self._with_system(row)
        if not output.max_tokens or output.kind == "mcqa":
            return row
        stats = self.stats[reader.name]
        try:
            record, cut = self.length_rule(output.max_tokens).apply(row.record)
        except Skip as skip:
            stats.drop(skip.rule)
            return None
        stats.truncated += int(cut)
        return Row(record, row.group, row.source)

    def source_rows(self, output: Output, reader) -> list[Row]:
        """One source's rows, through conversion, records, template and length."""
        stats = self.stats[reader.name]
        if reader.format:
            bar = self.progress.bar(f"{output.stem}:{reader.name}")
            rows = []
            try:
                for record in reader.records():
                    stats.read += 1
                    if bar is not None:
                        bar.update()
                    rows.append(Row(record, f"{reader.group_namespace()}:{record.id}", reader.name))
            finally:
                if bar is not None:
                    bar.close()
            stats.dropped.update(getattr(reader, "dropped", {}))  # rows a reader left out
        else:
            examples = self._examples(output, reader)
            builder = self._record_builder(output, reader)
            if generates(reader.config, output.kind):  # every answer corrupted in bulk
                builder.corruptor.prepare(examples, builder.rng)
            rows = builder.build(examples, stats)
            if examples and not rows:
                rule = stats.dropped.most_common(1)[0][0]
                raise DataError(
                    f"source '{reader.name}': rule '{rule}' left 0 of {len(examples)} rows"
                )
        fitted = [fit for row in rows if (fit := self._fit(output, reader, row)) is not None]
        if output.max_tokens and output.kind != "mcqa":
            require_rows(fitted, "max_tokens", reader.name, len(rows))
        return fitted

    def sampled_generated_rows(self, output: Output, reader, seen: set | None, rng) -> list[Row]:
        """The rows of a source whose records a model generates, sampled first.

        Corrupting an answer with a model costs generations; a source that keeps
        ``count`` (or ``cap``) of its examples visits them in a seeded random order and
        stops once it has that many rows that pass every rule (records, length,
        duplicates), so the model corrupts as many answers as the build keeps (plus
        the few a rule drops), never the whole dataset. The answers are corrupted in
        waves, in bulk: the first ``count`` examples of the order, then as many more as
        rules dropped, and so on; each wave visits what one-at-a-time would have. The
        rows keep their original order; the examples never visited are counted under
        ``count`` / ``cap``.
        """
        source, stats = reader.config, self.stats[reader.name]
        examples = self._examples(output, reader)
        want = source.count if source.count is not None else min(source.cap, len(examples))
        builder = self._record_builder(output, reader)
        kept: list[tuple[int, Row]] = []
        order = rng.sample(range(len(examples)), len(examples))
        visited = 0
        while len(kept) < want and visited < len(order):
            wave = order[visited : visited + want - len(kept)]  # what is still missing
            visited += len(wave)
            builder.corruptor.prepare([examples[i] for i in wave], builder.rng)
            for index in wave:
                for row in builder.build([examples[index]], stats):
                    fitted = self._fit(output, reader, row)
                    if fitted is None:
                        continue
                    if seen is not None:
                        key = dedup_key(fitted.record)
                        if key in seen:
                            stats.drop("duplicate")
                            continue
                        seen.add(key)
                    kept.append((index, fitted))
        if source.count is not None and len(kept) < source.count:
            raise DataError(
                f"source '{reader.name}': count {source.count} asked but only "
                f"{len(kept)} rows remain"
            )
        if examples and not kept:
            rule = stats.dropped.most_common(1)[0][0]
            raise DataError(f"source '{reader.name}': rule '{rule}' left 0 of {visited} rows")
        stats.drop("cap" if source.cap else "count", len(examples) - visited)
        return [row for _, row in sorted(kept, key=lambda pair: pair[0])]

    def _with_system(self, row: Row) -> Row:
        record = row.record
        if hasattr(record, "messages"):
            update = {"messages": with_system(list(record.messages), self.data.system_prompt)}
        else:
            update = {"prompt": with_system(list(record.prompt), self.data.system_prompt)}
        return Row(record.model_copy(update=update), row.group, row.source)

    def _deduped(self, reader, rows: list[Row], seen: set[str]) -> list[Row]:
        kept = []
        for row in rows:
            key = dedup_key(row.record)
            if key in seen:
                self.stats[reader.name].drop("duplicate")
            else:
                seen.add(key)
                kept.append(row)
        return require_rows(kept, "duplicate", reader.name, len(rows))

    def build_output(self, output: Output) -> dict[str, list[Row]]:
        """All rows of one output, deduplicated (across its sources, in order), sampled
        and split."""
        seen: set[str] | None = set() if self.data.dedup else None
        mixed, pinned = [], []
        for reader in output.readers:
            source = reader.config
            rng = mixing.rng_for(self.seed, output.stem, reader.name, "sample")
            if generates(source, output.kind) and (source.cap or source.count):
                kept = self.sampled_generated_rows(output, reader, seen, rng)
            else:
                rows = self.source_rows(output, reader)
                if seen is not None:
                    rows = self._deduped(reader, rows, seen)
                kept = mixing.sample(
                    rows, cap=source.cap, count=source.count, rng=rng, source=reader.name
                )
                self.stats[reader.name].drop(
                    "cap" if source.cap else "count", len(rows) - len(kept)
                )
            if source.to_split and not output.eval_set:
                pinned += [(source.to_split, row) for row in kept]
            else:
                mixed += kept
        ids = [row.record.id for row in mixed] + [row.record.id for _, row in pinned]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise DataError(f"{output.stem}: record id {dup!r} appears twice")
        split = mixing.split_rows(mixed, output.ratios, self.seed)
        for name, row in pinned:
            split[name].append(row)
        return split


def build_data(recipe, *, force: bool = False, progress: bool = True, log=print) -> dict:
    """Build the data files of a recipe in its ``layout.data_dir``; returns the manifest.

    Args:
        recipe: a loaded :class:`tutorlm.recipe.Recipe`.
        force: rebuild even when nothing changed.
        progress: show a progress bar per source (stderr).
        log: where the summary table and status lines go (``None``: nowhere).

    Raises:
        DataError: a source or rule problem, named (missing column, unknown
            preset, a rule that left no rows...).
    """
    say = log or (lambda _text: None)
    outputs = _outputs(recipe)
    seed = data_seed(recipe)
    missing = {}
    for output in outputs:
        for source in output.sources:
            if getattr(source, "optional", False) and not Path(source.path).is_file():
                missing[source.name] = source.path
                logger.warning(
                    "data: source '%s': %s not found; it is optional (private data), "
                    "so the build goes on without it",
                    source.name,
                    source.path,
                )
                continue
            if source.type == "tutoring":  # retrieves as the served tutor does
                source = source.retrieving_as(recipe.rag)
            reader = open_reader(source, output.kind, seed, output.stem)
            if source.type == "tutoring":  # its notes budget counts the model's tokens
                reader.model = recipe.model
            output.readers.append(reader)
    outputs = [output for output in outputs if output.readers]
    if not outputs:
        raise DataError(f"every source is missing: {', '.join(missing.values())}")
    for output in outputs:  # everything is checked before any row is converted
        for reader in output.readers:
            reader.check()
            if not reader.format:
                check_rules(reader.config, reader.shape, output.kind)
    layout = recipe.layout
    out_dir = layout.data_dir
    key = fingerprint(recipe, outputs)
    if not force:
        manifest = up_to_date(layout, key)
        if manifest is not None:
            say(f"data: {out_dir} is up to date (fingerprint {key[:12]}), nothing to do")
            return manifest
    builder = _Builder(recipe, outputs, _Progress(progress))
    for output in outputs:
        for reader in output.readers:
            builder.stats[reader.name] = SourceStats(output.stem, reader.config.type)
    built = {output.stem: builder.build_output(output) for output in outputs}
    decontamination = decontaminate(built, outputs, recipe.data, builder.stats)
    written = {}
    for output in outputs:
        for split, rows in built[output.stem].items():
            rng = mixing.rng_for(seed, output.stem, split, "order")
            ordered = mixing.shuffled(rows, rng)
            for row in ordered:
                builder.stats[row.source].kept += 1
            path = out_dir / output.file(split)
            write_records(path, [row.record for row in ordered])
            written[output.file(split)] = {
                "kind": output.kind,
                "rows": len(ordered),
                "eval": output.is_eval(split),
                "sha256": file_sha256(path),
            }
    manifest = {
        "recipe": recipe.name,
        "recipe_hash": recipe.hash(),
        "fingerprint": key,
        "seed": seed,
        "tutorlm": __version__,
        "outputs": written,
        "eval_sets": decontamination["eval_sets"],
        "decontaminated": decontamination["removed"],
        "test_questions": decontamination["test_questions"],
        "sources": {name: stats.to_dict() for name, stats in builder.stats.items()},
        "inputs": {r.name: r.fingerprint() for o in outputs for r in o.readers},
        "missing": missing,
    }
    _remove_stale(layout, written)
    atomic_write_text(
        layout.data_manifest, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    )
    say(format_table(manifest))
    return manifest


def _remove_stale(layout: RunLayout, written: dict) -> None:
    """Delete files an earlier build wrote that this recipe no longer asks for."""
    if layout.data_manifest.is_file():
        for name in json.loads(layout.data_manifest.read_text()).get("outputs", {}):
            if name not in written:
                (layout.data_dir / name).unlink(missing_ok=True)


def format_table(manifest: dict) -> str:
    """The end-of-build table: source, rows read, kept, dropped by each rule."""
    header = ("output", "source", "read", "kept", "dropped by rule")
    lines = []
    for name, info in manifest["sources"].items():
        drops = ", ".join(f"{rule} {n}" for rule, n in info["dropped"].items()) or "-"
        if info.get("truncated"):
            drops += f" (truncated {info['truncated']})"
        lines.append((info["section"], name, str(info["read"]), str(info["kept"]), drops))
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(4)]
    rows = [
        "  ".join(
            [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
            + [row[i].rjust(widths[i]) for i in (2, 3)]
            + [row[4]]
        )
        for row in [header, *lines]
    ]
    files = ", ".join(f"{name} {info['rows']}" for name, info in manifest["outputs"].items())
    missing = ", ".join(f"{n} ({p})" for n, p in manifest.get("missing", {}).items())
    notes = [f"missing optional sources, left out: {missing}"] if missing else []
    return "\n".join(
        [*rows, f"files: {files}", f"eval sets: {', '.join(manifest['eval_sets'])}", *notes]
    )
