"""Helpers shared by the serving and chat tests (no tests of its own).

Imported as ``from serve_support import ...``: pytest puts ``tests/`` on the
path. A tiny model whose greedy replies differ from prompt to prompt, three small
Markdown notes indexed with hand-made keyword vectors, and an engine whose reply
is scripted, so a test can make an answer cite ``[1]``.
"""

from __future__ import annotations

from pathlib import Path

from rag_support import KeywordEmbedder as KeywordCounts

from tutorlm.serve.engine import Finish, TokenStream

NOTES = {
    "physics.md": (
        "# Mechanics\n\n## Momentum\n\nMomentum is mass times velocity, p = m v. "
        "It is conserved when no external force acts on a system.\n\n"
        "## Energy\n\nKinetic energy is one half of mass times velocity squared.\n"
    ),
    "calculus.md": (
        "# Calculus\n\n## Derivatives\n\nThe derivative measures the rate of change of a "
        "function. The chain rule differentiates a composition: (f(g(x)))' = f'(g(x)) g'(x).\n"
    ),
    "biology.md": (
        "# Cells\n\n## Mitochondria\n\nMitochondria make ATP by cellular respiration.\n"
    ),
}
MOMENTUM = "notes/physics.md, Mechanics > Momentum"


class KeywordEmbedder(KeywordCounts):
    """Unit vectors of keyword counts: deterministic, instant, no model to load."""

    WORDS = ("momentum", "mass", "velocity", "energy", "derivative", "chain", "atp", "cells")
    dim = len(WORDS)


def build_notes_index(folder: Path):
    """Index the three notes under ``folder/notes`` and load the index."""
    from tutorlm.rag import build_index, load_index
    from tutorlm.rag.config import IndexSettings

    notes = folder / "notes"
    notes.mkdir(parents=True)
    for name, text in NOTES.items():
        (notes / name).write_text(text)
    settings = IndexSettings(chunk_tokens=64, chunk_overlap=8)
    build_index([notes], folder / "index", settings=settings, embedder=KeywordEmbedder())
    return load_index(folder / "index", embedder=KeywordEmbedder())


def lively_copy(tiny_model_dir: Path, out_dir: Path) -> Path:
    """The tiny model with its weights scaled up, so that different prompts get
    different greedy replies (the fixture's random init answers "\\n" to everything)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(8)
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out_dir)
    return out_dir


class ScriptedEngine:
    """An engine that answers every request with the same pieces and records the prompts."""

    def __init__(self, tokenizer, pieces: list[str], name: str = "scripted"):
        self.tokenizer, self.pieces, self.name = tokenizer, pieces, name
        self.requests = []

    def count_prompt_tokens(self, messages):
        from tutorlm.generation import chat_input_ids

        return int(chat_input_ids(self.tokenizer, messages).shape[-1])

    def submit(self, request, loop=None):
        self.requests.append(request)
        stream = TokenStream(loop, request.deadline)
        for piece in self.pieces:
            stream.push(piece)
        stream.push(Finish("stop", self.count_prompt_tokens(request.messages), len(self.pieces)))
        return stream
