// The tutorlm chat page: sends the conversation to /v1/chat/completions with
// stream: true and the mode chosen for that message, reads the server-sent events
// as they arrive, and lists the notes each answer was given as expandable sources
// (cited ones first). Model and note text is only ever set with textContent, never
// parsed as HTML.
"use strict";

const state = { model: null, history: [], controller: null };
const $ = (id) => document.getElementById(id);

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function setStatus(text, isError) {
  $("status").textContent = text || "";
  $("status").classList.toggle("error", Boolean(isError));
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return (body.error && body.error.message) || response.statusText;
  } catch (_) {
    return response.statusText;
  }
}

async function loadModel() {
  const response = await fetch("/v1/models");
  if (!response.ok) throw new Error(await errorMessage(response));
  const card = (await response.json()).data[0];
  state.model = card.id;
  $("model").textContent = state.model;
  document.title = `tutorlm · ${state.model}`;
  if (card.mode) setMode(card.mode); // the server's default, until the student picks
}

// The mode the next message is sent in: the checked radio, which stays checked.
function chosenMode() {
  return document.querySelector('input[name="mode"]:checked').value;
}

function setMode(mode) {
  const radio = document.querySelector(`input[name="mode"][value="${CSS.escape(mode)}"]`);
  if (radio) radio.checked = true;
}

function addMessage(role, text, mode) {
  const box = element("section", `message ${role}`);
  const who = element("div", "who", role === "user" ? "you" : "tutor");
  box.append(who);
  const content = element("div", "content", text);
  box.append(content);
  if (mode) showMode(box, mode);
  $("conversation").append(box);
  box.scrollIntoView({ block: "end" });
  return { box, content };
}

// The mode a message was sent (or answered) in, as a badge next to who wrote it.
function showMode(box, mode) {
  box.dataset.mode = mode;
  let badge = box.querySelector(".mode-badge");
  if (!badge) {
    badge = element("span", "mode-badge");
    box.querySelector(".who").append(" ", badge);
  }
  badge.textContent = mode;
  badge.title = `${mode} mode`;
}

// "[n] file, p. 3 › heading": where a reader finds the note.
function whereOf(note) {
  let where = note.source;
  if (note.page !== null && note.page !== undefined) where += `, p. ${note.page}`;
  if (note.heading) where += ` › ${note.heading}`;
  return where;
}

function sourceItem(note, open) {
  const item = element("li", note.cited ? "source cited" : "source");
  item.dataset.number = String(note.number);
  const details = element("details");
  details.open = open;
  const summary = element("summary");
  summary.append(element("span", "n", `[${note.number}]`), " ", element("span", "where", whereOf(note)));
  if (note.cited) summary.append(" ", element("span", "mark", "cited"));
  details.append(summary, element("blockquote", "passage", note.text));
  item.append(details);
  return item;
}

function sourceGroup(className, label, notes, open) {
  const group = element("div", `source-group ${className}`);
  group.append(element("div", "source-label", label));
  const list = element("ul");
  for (const note of notes) list.append(sourceItem(note, open.has(note.number)));
  group.append(list);
  return group;
}

// The notes an answer was given, as expandable items: the cited ones first, then
// the others, dimmed. Called again when the answer ends (now marked with what it
// cites); a note the student opened meanwhile stays open.
function showSources(box, citations) {
  let sources = box.querySelector(".sources");
  if (!citations || citations.length === 0) {
    if (sources) sources.remove();
    return;
  }
  const open = new Set();
  if (sources) {
    for (const item of sources.querySelectorAll("li.source")) {
      if (item.querySelector("details").open) open.add(Number(item.dataset.number));
    }
  } else {
    sources = element("div", "sources");
    box.append(sources);
  }
  const cited = citations.filter((note) => note.cited);
  const given = citations.filter((note) => !note.cited);
  const groups = [];
  if (cited.length) groups.push(sourceGroup("cited", "sources cited", cited, open));
  if (given.length) {
    const label = cited.length ? "also given, not cited" : "notes given";
    groups.push(sourceGroup("given", label, given, open));
  }
  sources.replaceChildren(...groups);
}

// Split a growing buffer of server-sent events into complete "data:" payloads.
function takeEvents(buffer) {
  const events = [];
  let end;
  while ((end = buffer.indexOf("\n\n")) !== -1) {
    const block = buffer.slice(0, end);
    buffer = buffer.slice(end + 2);
    const data = block
      .split("\n")
      .filter((line) => line.startsWith("data:"))
      .map((line) => line.slice(5).trimStart())
      .join("\n");
    if (data) events.push(data);
  }
  return { events, rest: buffer };
}

async function ask(question, mode) {
  state.history.push({ role: "user", content: question });
  addMessage("user", question, mode);
  const { box, content } = addMessage("assistant", "");
  box.dataset.state = "streaming";
  box.dataset.chunks = "0";
  setBusy(true);
  setStatus("thinking…");
  state.controller = new AbortController();
  let answer = "";
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        model: state.model,
        messages: state.history,
        stream: true,
        stream_options: { include_usage: true },
        mode,
      }),
      signal: state.controller.signal,
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const parsed = takeEvents(buffer + decoder.decode(value, { stream: true }));
      buffer = parsed.rest;
      for (const data of parsed.events) {
        if (data === "[DONE]") continue;
        const event = JSON.parse(data);
        if (event.error) throw new Error(event.error.message);
        if (event.mode) showMode(box, event.mode);
        if (event.citations) showSources(box, event.citations);
        if (event.usage) {
          const usage = element("div", "usage",
            `${event.usage.prompt_tokens} prompt + ${event.usage.completion_tokens} answer tokens`);
          box.append(usage);
        }
        const choice = event.choices && event.choices[0];
        const piece = choice && choice.delta && choice.delta.content;
        if (piece) {
          answer += piece;
          content.textContent = answer;
          box.dataset.chunks = String(Number(box.dataset.chunks) + 1);
          box.scrollIntoView({ block: "end" });
        }
        if (choice && choice.finish_reason === "length") setStatus("(the answer reached its length limit)");
      }
    }
    box.dataset.state = "done";
    if ($("status").textContent === "thinking…") setStatus("");
  } catch (error) {
    const stopped = error.name === "AbortError";
    box.dataset.state = stopped ? "done" : "error";
    setStatus(stopped ? "(stopped)" : `error: ${error.message}`, !stopped);
    if (!stopped) state.history.pop(); // the question was not answered: ask it again later
  } finally {
    if (box.dataset.state === "done") state.history.push({ role: "assistant", content: answer });
    state.controller = null;
    setBusy(false);
  }
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").hidden = !busy;
}

function submit(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question || state.controller) return;
  $("question").value = "";
  ask(question, chosenMode());
}

function reset() {
  if (state.controller) state.controller.abort();
  state.history = [];
  for (const node of document.querySelectorAll(".message")) node.remove();
  setStatus("");
}

document.addEventListener("DOMContentLoaded", () => {
  $("ask").addEventListener("submit", submit);
  $("question").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) submit(event);
  });
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("reset").addEventListener("click", reset);
  loadModel().catch((error) => setStatus(`cannot reach the tutor: ${error.message}`, true));
});
