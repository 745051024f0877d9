"""What every source reader does: check before work, then yield examples.

A reader is made from one source of the recipe. :meth:`Reader.check` runs for
every source before any row is converted, so a bad mapping or a missing file
fails at once; :meth:`Reader.examples` then yields examples while counting rows
read and rows dropped; :meth:`Reader.fingerprint` says what the output depends
on, for the "nothing changed, nothing to do" check.
"""

from __future__ import annotations

from collections.abc import Iterator

from tutorlm.data.examples import DataError, Example, Skip, SourceStats
from tutorlm.data.rules.mcqa import subject_allowed

DEFAULT_SHAPE = {"sft": "qa", "preference": "pair", "mcqa": "mc"}


def package_version(name: str) -> str:
    """The installed version of a distribution, or "missing"."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "missing"


def _html_to_text(example: Example) -> None:
    """Every text field of an example from HTML to plain text (Stack Exchange posts)."""
    from tutorlm.data.rules.text import html_to_text

    for name in ("question", "answer", "chosen", "rejected", "a", "b"):
        value = getattr(example, name)
        if value:
            setattr(example, name, html_to_text(value))
    if example.answers:
        example.answers = [(html_to_text(text), score) for text, score in example.answers]


class Reader:
    """Base of the source readers.

    Subclasses set ``shapes`` (the shapes they can yield; the first is the
    default unless the section suggests another) and implement ``rows`` (raw
    items with their count when known) and ``to_example``.
    """

    shapes: tuple[str, ...] = ("qa",)

    def __init__(self, config, kind: str, seed: int, section: str):
        self.config = config
        self.kind = kind
        self.seed = seed
        self.section = section
        self.name = config.name
        self.html = bool(getattr(config, "html_to_text", False))

    @property
    def shape(self) -> str:
        """The shape this reader yields, from the source's ``shape`` or by section."""
        if self.config.shape != "auto":
            return self.config.shape
        preferred = DEFAULT_SHAPE[self.kind]
        return preferred if preferred in self.shapes else self.shapes[0]

    @property
    def format(self) -> str | None:
        """The record kind of a source that already holds records (jsonl only)."""
        return None

    def check(self) -> None:
        """Fail now, naming the source, if the source cannot work. Default: shape."""
        if self.shape not in self.shapes:
            raise DataError(
                f"source '{self.name}': shape '{self.shape}' is not available; "
                f"this source yields {', '.join(self.shapes)}"
            )

    def rows(self) -> tuple[Iterator, int | None]:
        """Raw items, and how many there are if known (for the progress bar)."""
        raise NotImplementedError

    def to_example(self, row, index: int) -> Example:
        raise NotImplementedError

    def fingerprint(self) -> dict:
        """What the output depends on besides the recipe (file hashes, versions)."""
        return {}

    def group_namespace(self) -> str:
        """What makes a group name global: rows of two sources share a group only when
        they come from the same underlying data (a CHAMP problem, a hub dataset's row).
        By default groups belong to their source."""
        return f"source:{self.name}"

    def examples(self, stats: SourceStats, progress=None) -> Iterator[Example]:
        """Examples of the source; rows a converter rejects are counted by rule."""
        items, total = self.rows()
        if progress is not None:
            progress.reset(total=total)
        subjects = self.config.subjects
        for index, row in enumerate(items):
            stats.read += 1
            if progress is not None:
                progress.update()
            try:
                example = self.to_example(row, index)
                if example.shape == "mc" and not subject_allowed(example, subjects):
                    raise Skip("subject_filter")
                if self.html:
                    _html_to_text(example)
                example.group = f"{self.group_namespace()}:{example.group}"
            except Skip as skip:
                stats.drop(skip.rule)
                continue
            yield example
