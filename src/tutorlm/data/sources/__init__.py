"""Sources of rows: the hub, local JSONL files, and bundled offline data."""

from __future__ import annotations

from tutorlm.data.sources.base import Reader
from tutorlm.data.sources.bundled import ChampReader, MmluReader, NotesReader, ReasoningGymReader
from tutorlm.data.sources.hub import HubReader
from tutorlm.data.sources.hub_presets import PRESETS, HubPreset, load_preset_fixture
from tutorlm.data.sources.local import JsonlReader
from tutorlm.data.sources.tutoring import TutoringReader

READERS: dict[str, type[Reader]] = {
    "hub": HubReader,
    "jsonl": JsonlReader,
    "mmlu": MmluReader,
    "champ": ChampReader,
    "reasoning_gym": ReasoningGymReader,
    "notes": NotesReader,
    "tutoring": TutoringReader,
}


def open_reader(config, kind: str, seed: int, section: str) -> Reader:
    """The reader for one source of the recipe, feeding a section of ``kind``."""
    return READERS[config.type](config, kind, seed, section)


__all__ = ["PRESETS", "HubPreset", "Reader", "load_preset_fixture", "open_reader"]
