/* The "Thinking…" panel of an answer: its reasoning text, its timer, and folding it away once the
 * answer starts (unless the user opened or closed it: data-user-toggled). */
import { $, appendText } from "./dom.js";

const timers = new Map(); // message id -> reasoning timer

export function ensureThinking(el) {
  let details = $(".thinking", el);
  if (!details) {
    details = document.createElement("details");
    details.className = "thinking";
    details.hidden = true;
    const summary = document.createElement("summary");
    const label = document.createElement("span");
    label.className = "thinking-label";
    label.textContent = "Thinking…";
    const time = document.createElement("span");
    time.className = "thinking-time";
    summary.append(label, " ", time);
    const body = document.createElement("div");
    body.className = "reasoning";
    details.append(summary, body);
    $(".content", el).before(details);
  }
  return details;
}

export function startTimer(id, details) {
  if (timers.has(id)) return;
  const started = performance.now();
  const time = $(".thinking-time", details);
  const tick = () => { time.textContent = ((performance.now() - started) / 1000).toFixed(1) + " s"; };
  tick();
  timers.set(id, setInterval(tick, 100));
}

export function stopTimer(id) {
  clearInterval(timers.get(id));
  timers.delete(id);
}

export function stopAllTimers() {
  for (const id of Array.from(timers.keys())) stopTimer(id);
}

export function appendReasoning(el, text) {
  const details = ensureThinking(el);
  if (details.hidden) {
    details.hidden = false;
    if (!details.dataset.userToggled && !details.dataset.done) details.open = true;
  }
  appendText($(".reasoning", details), text);
  if (!details.dataset.done) startTimer(el.dataset.message, details);
}

// The answer has started (or the message ended): fold the reasoning away.
export function endThinking(el) {
  const details = $(".thinking", el);
  stopTimer(el.dataset.message);
  if (!details || details.dataset.done) return;
  details.dataset.done = "1";
  $(".thinking-label", details).textContent = "Thought";
  if (!details.dataset.userToggled) details.open = false;
}
