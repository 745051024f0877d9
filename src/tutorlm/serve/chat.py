"""The terminal chat: a streaming conversation with the tutor, with a few slash commands.

It reads lines from any text stream and writes to any text stream, so tests drive
it with ``io.StringIO`` and a subprocess with piped stdin behaves like a person.
"""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass, field
from typing import TextIO

from tutorlm.serve.engine import EngineError, GenerationRequest
from tutorlm.serve.tutor import MODE_PROMPTS, ConversationError, Tutor, citation_records

HELP = """commands:
  /tutor               switch to tutor mode: explain step by step
  /hint                switch to hint mode: guide without giving the answer
  /hint QUESTION       ask this one question in hint mode, keeping the mode (/tutor too)
  /mode [tutor|hint]   show or switch the mode
  /sources             the notes behind the last answer: file, heading, passage
  /sources N           note N in full
  /reset               forget the conversation
  /help                this list
  /quit                leave (or Ctrl-D)"""

PASSAGE_WIDTH = 88
"""Columns a note's passage is wrapped to by ``/sources``."""


@dataclass(frozen=True)
class Ask:
    """A command that asks a question (``/hint QUESTION``): the question and its mode."""

    question: str
    mode: str


@dataclass
class ChatSession:
    """The state of one terminal conversation: its turns, mode and last sources."""

    tutor: Tutor
    mode: str
    max_tokens: int = 256
    temperature: float = 0.0
    max_prompt_tokens: int = 2048
    history: list[dict] = field(default_factory=list)
    last_sources: list = field(default_factory=list)
    last_answer: str = ""

    def command(self, line: str) -> str | Ask | None:
        """Run a slash command; returns what to print, a question to ask, or None to quit."""
        name, _, argument = line.strip().partition(" ")
        argument = argument.strip()
        if name in ("/quit", "/exit"):
            return None
        if name.removeprefix("/") in MODE_PROMPTS:
            mode = name.removeprefix("/")
            if argument:  # one question in this mode; the session's mode stays
                return Ask(argument, mode)
            self.mode = mode
            return f"(mode: {self.mode})"
        if name == "/reset":
            self.history.clear()
            self.last_sources, self.last_answer = [], ""
            return "(conversation cleared)"
        if name == "/mode":
            if not argument:
                return f"(mode: {self.mode})"
            if argument not in MODE_PROMPTS:
                return f"(unknown mode {argument!r}: use {' or '.join(MODE_PROMPTS)})"
            self.mode = argument
            return f"(mode: {self.mode})"
        if name == "/sources":
            return self.describe_sources(argument)
        if name == "/help":
            return HELP
        return f"(unknown command {name}; /help lists them)"

    def describe_sources(self, number: str = "") -> str:
        """Each note of the last answer: ``[n] file, heading (cited|given)`` and the start
        of its passage; with ``number``, that note's whole passage."""
        if self.tutor.index is None:
            return "(no notes: start the chat with --rag DIR to cite course notes)"
        if not self.last_sources:
            return "(no notes were used yet)"
        records = citation_records(self.last_sources, self.last_answer)
        if number:
            if not (number.isdigit() and 1 <= int(number) <= len(records)):
                return f"(no note {number!r}: the last answer was given notes 1-{len(records)})"
            records = [records[int(number) - 1]]
        lines = []
        for record in records:
            mark = "cited" if record["cited"] else "given"
            lines.append(f"[{record['number']}] {record['location']} ({mark})")
            passage = " ".join(record["text"].split())
            if not number:
                passage = textwrap.shorten(passage, 200, placeholder=" …")
            lines.append(textwrap.indent(textwrap.fill(passage, PASSAGE_WIDTH - 4), "    "))
        return "\n".join(lines)

    def ask(self, question: str, out: TextIO, mode: str | None = None) -> None:
        """Answer ``question`` in ``mode`` (default: the session's), streaming the reply
        to ``out``; the turn joins the history."""
        self.history.append({"role": "user", "content": question})
        try:
            prepared, dropped = self.tutor.prepare_within(
                self.history, self.max_prompt_tokens, mode=mode or self.mode
            )
        except ConversationError as error:
            self.history.pop()
            out.write(f"({error})\n")
            return
        if dropped:
            del self.history[:dropped]
            out.write(f"(the {dropped} oldest turns no longer fit and were dropped)\n")
        max_tokens = self.max_tokens
        window = getattr(self.tutor.engine, "context_window", None)
        if window is not None:  # a long session must not run the model past its window
            room = window - self.tutor.engine.count_prompt_tokens(prepared.messages)
            max_tokens = max(1, min(max_tokens, room))
        request = GenerationRequest(
            prepared.messages, max_tokens=max_tokens, temperature=self.temperature
        )
        pieces: list[str] = []
        out.write("tutor> ")
        out.flush()
        stream = self.tutor.engine.submit(request)
        try:
            for piece in stream:
                pieces.append(piece)
                out.write(piece)
                out.flush()
        except KeyboardInterrupt:
            stream.cancel()
            out.write(" (stopped)")
        except EngineError as error:
            out.write(f"\n(error: {error})\n")
            self.history.pop()
            return
        out.write("\n")
        answer = "".join(pieces)
        self.history.append({"role": "assistant", "content": answer})
        self.last_sources, self.last_answer = prepared.sources, answer
        if prepared.sources:
            cited = [r for r in citation_records(prepared.sources, answer) if r["cited"]]
            shown = cited or citation_records(prepared.sources, answer)
            label = "cited" if cited else "notes given"
            where = "; ".join(f"[{r['number']}] {r['location']}" for r in shown)
            out.write(f"({label}: {where})\n")


def run_chat(
    session: ChatSession, stdin: TextIO | None = None, stdout: TextIO | None = None
) -> int:
    """The read-answer loop, until ``/quit`` or end of input. Returns the exit status."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    interactive = stdin.isatty()
    if interactive:
        import readline  # noqa: F401  (line editing and history for input())
    notes = (
        f"notes: {len(session.tutor.index)} chunks"
        if session.tutor.index is not None
        else "no notes"
    )
    stdout.write(
        f"tutorlm chat: {session.tutor.name}, {notes}, mode {session.mode}. "
        "/help for commands, Ctrl-D to leave.\n"
    )
    while True:
        try:
            if interactive:
                line = input("you> ")
            else:
                stdout.write("you> ")
                stdout.flush()
                line = stdin.readline() or None  # "" only at end of input
        except (EOFError, KeyboardInterrupt):
            line = None
        if line is None:
            stdout.write("\n")
            return 0
        line = line.strip()
        if not line:
            continue
        question, mode = line, None
        if line.startswith("/"):
            reply = session.command(line)
            if reply is None:
                return 0
            if not isinstance(reply, Ask):
                stdout.write(reply + "\n")
                continue
            question, mode = reply.question, reply.mode
        if not interactive:
            stdout.write(line + "\n")  # echo, so a transcript reads like a conversation
        session.ask(question, stdout, mode=mode)
