// The quiz tab (served with `tutorlm serve --quiz quiz.jsonl`): asks the quiz's
// questions one at a time, sends each answer to /v1/quiz/answer to be graded, shows
// the verdict, the explanation and its source, and at the end asks /v1/quiz/finish for
// the score and the sections to re-read. Text from the server is only ever set with
// textContent. The tab stays hidden when the server serves no quiz.
"use strict";

const quiz = { questions: [], at: 0, answers: [], saving: false };
const q$ = (id) => document.getElementById(id);

function quizElement(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

async function quizPost(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const data = await response.json();
  if (!response.ok) throw new Error((data.error && data.error.message) || response.statusText);
  return data;
}

function showTab(name) {
  const onQuiz = name === "quiz";
  document.body.classList.toggle("quiz-tab", onQuiz);
  q$("quiz").hidden = !onQuiz;
  q$("tab-chat").setAttribute("aria-selected", String(!onQuiz));
  q$("tab-quiz").setAttribute("aria-selected", String(onQuiz));
}

function startQuiz() {
  quiz.at = 0;
  quiz.answers = [];
  q$("quiz-intro").hidden = true;
  q$("quiz-result").hidden = true;
  q$("quiz-card").hidden = false;
  showQuestion();
}

function showQuestion() {
  const question = quiz.questions[quiz.at];
  const card = q$("quiz-card");
  card.dataset.state = "asking";
  card.dataset.kind = question.kind;
  q$("quiz-progress").textContent =
    `Question ${quiz.at + 1} of ${quiz.questions.length} · ${question.file} › ${question.section}`;
  q$("quiz-question").textContent = question.question;
  const choices = q$("quiz-choices");
  choices.replaceChildren(quizElement("legend", "", "choices"));
  choices.hidden = question.choices.length === 0;
  question.choices.forEach((choice, number) => {
    const letter = String.fromCharCode(65 + number);
    const label = quizElement("label");
    const radio = quizElement("input");
    radio.type = "radio";
    radio.name = "quiz-choice";
    radio.value = letter;
    label.append(radio, ` ${letter}. `, quizElement("span", "choice", choice));
    choices.append(label);
  });
  const answer = q$("quiz-answer");
  answer.value = "";
  answer.hidden = question.kind === "mcqa";
  answer.placeholder = question.kind === "numeric" ? "a number" : "a word or phrase";
  q$("quiz-submit").disabled = false;
  q$("quiz-feedback").hidden = true;
  (question.kind === "mcqa" ? choices.querySelector("input") : answer).focus();
}

async function submitAnswer(event) {
  event.preventDefault();
  const card = q$("quiz-card");
  if (card.dataset.state !== "asking") return;
  const question = quiz.questions[quiz.at];
  const picked = document.querySelector('input[name="quiz-choice"]:checked');
  const answer = question.kind === "mcqa" ? (picked ? picked.value : "") : q$("quiz-answer").value;
  q$("quiz-submit").disabled = true;
  try {
    const graded = await quizPost("/v1/quiz/answer", { id: question.id, answer });
    quiz.answers.push({ id: question.id, answer });
    const feedback = q$("quiz-feedback");
    feedback.className = graded.correct ? "right" : "wrong";
    const letter = question.kind === "mcqa" ? ` (${graded.letter})` : "";
    feedback.querySelector(".verdict").textContent = graded.correct
      ? "Right."
      : `Not quite: the answer is ${graded.answer}${letter}.`;
    feedback.querySelector(".explanation").textContent = graded.explanation;
    feedback.querySelector(".source").textContent =
      `source: ${graded.source.file} › ${graded.source.heading.replaceAll(" > ", " › ")}`;
    feedback.hidden = false;
    card.dataset.state = "graded";
    q$("quiz-next").textContent = quiz.at + 1 < quiz.questions.length ? "Next" : "See my score";
    q$("quiz-next").focus();
  } catch (error) {
    q$("quiz-submit").disabled = false;
    setQuizStatus(`error: ${error.message}`);
  }
}

function setQuizStatus(text) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.classList.toggle("error", Boolean(text));
}

async function nextQuestion() {
  quiz.at += 1;
  if (quiz.at < quiz.questions.length) {
    showQuestion();
    return;
  }
  try {
    const student = q$("quiz-student").value.trim();
    const result = await quizPost("/v1/quiz/finish", { student, answers: quiz.answers });
    q$("quiz-card").hidden = true;
    q$("quiz-result").hidden = false;
    q$("quiz-score").textContent = `Score: ${result.score} / ${result.total}`;
    q$("quiz-saved").textContent = result.saved !== null ? `saved for ${student}` : "";
    const list = q$("quiz-reread");
    list.replaceChildren();
    if (result.reread.length === 0) list.append(quizElement("li", "", "Every answer right: nothing to re-read."));
    for (const where of result.reread) {
      list.append(quizElement("li", "reread", `Re-read ${where.file} › ${where.heading.replaceAll(" > ", " › ")}`));
    }
  } catch (error) {
    setQuizStatus(`error: ${error.message}`);
  }
}

async function loadQuiz() {
  const response = await fetch("/v1/quiz");
  if (!response.ok) return; // no quiz served: the tab stays hidden
  const body = await response.json();
  quiz.questions = body.questions;
  quiz.saving = body.saving;
  q$("quiz-student-label").hidden = !body.saving;
  q$("tabs").hidden = false;
}

document.addEventListener("DOMContentLoaded", () => {
  q$("tab-chat").addEventListener("click", () => showTab("chat"));
  q$("tab-quiz").addEventListener("click", () => showTab("quiz"));
  q$("quiz-start").addEventListener("click", startQuiz);
  q$("quiz-again").addEventListener("click", startQuiz);
  q$("quiz-card").addEventListener("submit", submitAnswer);
  q$("quiz-next").addEventListener("click", nextQuestion);
  loadQuiz().catch(() => {});
});
