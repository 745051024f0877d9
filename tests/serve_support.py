"""Helpers shared by the serving and chat tests (no tests of its own).

Imported as ``from serve_support import ...``: pytest puts ``tests/`` on the
path. A tiny model whose greedy replies differ from prompt to prompt, three small
Markdown notes indexed with hand-made keyword vectors, and an engine whose reply
is scripted, so a test can make an answer cite ``[1]``.
"""

from __future__ import annotations

import json
import socketserver
import threading
from pathlib import Path

from rag_support import KeywordEmbedder as KeywordCounts

from tutorlm.serve.engine import Finish, TokenStream
from tutorlm.serve.tutor import Tutor
from tutorlm.templates import chat_prompt_ids

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
        return len(chat_prompt_ids(self.tokenizer, messages))

    def submit(self, request, loop=None):
        self.requests.append(request)
        stream = TokenStream(loop, request.deadline)
        for piece in self.pieces:
            stream.push(piece)
        stream.push(Finish("stop", self.count_prompt_tokens(request.messages), len(self.pieces)))
        return stream


class RecordingTutor(Tutor):
    """A tutor that records the ``mode`` of each request it prepares a prompt for: what
    the server received (None where the request named none)."""

    def __init__(self, engine, **kwargs):
        super().__init__(engine, **kwargs)
        self.modes: list[str | None] = []

    def prepare(self, conversation, *, mode=None, use_rag=True):
        self.modes.append(mode)
        return super().prepare(conversation, mode=mode, use_rag=use_rag)


class HeldEngine(ScriptedEngine):
    """Sends its pieces at once, then holds the reply open until ``release`` is set."""

    def __init__(self, tokenizer, pieces: list[str], name: str = "scripted"):
        super().__init__(tokenizer, pieces, name)
        self.release = threading.Event()

    def submit(self, request, loop=None):
        self.requests.append(request)
        stream = TokenStream(loop, request.deadline)
        for piece in self.pieces:
            stream.push(piece)

        def finish():
            self.release.wait(timeout=60)
            stream.push(Finish("stop", 1, len(self.pieces)))

        threading.Thread(target=finish, daemon=True).start()
        return stream


class FakeBackend:
    """An OpenAI-compatible backend on 127.0.0.1 that streams ``pieces`` and then either
    ends the reply or, with ``stall``, sends nothing more (until the test ends).

    It ignores ``max_tokens``, as a misbehaving backend would. ``requests`` holds the
    JSON bodies it received.
    """

    def __init__(self, pieces: list[str], *, stall: bool = False):
        self.pieces, self.stall = pieces, stall
        self.requests: list[dict] = []
        self.release = threading.Event()
        backend = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                head = b""
                while not head.endswith(b"\r\n\r\n") and (byte := self.rfile.read(1)):
                    head += byte
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                backend.requests.append(json.loads(self.rfile.read(length)))
                self.wfile.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Connection: close\r\n\r\n"
                )
                for piece in backend.pieces:
                    event = {"choices": [{"index": 0, "delta": {"content": piece}}]}
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                self.wfile.flush()
                if backend.stall:
                    backend.release.wait(timeout=60)
                    return
                self.wfile.write(b"data: [DONE]\n\n")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeBackend:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
