/* An answer as it is written: the numbered events the server sends for a message ("events"),
 * each folded in once, in seq order; the snapshot a resume brings; and the final HTML that
 * replaces the message when it ends. Model text is only ever written with textContent. */
import { $, ACTIVE, appendText, article, fragment, setStatus } from "./dom.js";
import { announce } from "./feedback.js";
import { keepingBottom } from "./scroll.js";
import { lastSeq, resume, resuming } from "./seq.js";
import { appendReasoning, endThinking, ensureThinking, startTimer, stopTimer } from "./thinking.js";
import { showQueue } from "./queue.js";
import { syncGenerating } from "./composer.js";
import { refreshThread } from "./thread.js";

function applyEvent(el, e) {
  if (e.kind === "text" || e.kind === "reasoning" || e.kind === "done") showQueue(el, null);
  switch (e.kind) {
    case "queue":
      showQueue(el, e.ahead);
      break;
    case "start":
      setStatus(el, "streaming");
      announce("Generating an answer…");
      break;
    case "text":
      if (e.text) {
        endThinking(el);
        appendText($(".content", el), e.text);
      }
      break;
    case "reasoning":
      if (e.text) appendReasoning(el, e.text);
      break;
    case "notice":
      if (e.dropped_turns) {
        const note = document.createElement("p");
        note.className = "msg-state msg-note";
        note.textContent = e.dropped_turns + " earlier message(s) left out to fit the model's context.";
        $(".content", el).after(note);
      }
      break;
    case "done":
      endThinking(el);
      setStatus(el, e.status || "done");
      if (e.error) {
        const p = document.createElement("p");
        p.className = "msg-state msg-error";
        p.textContent = "Error: " + e.error;
        $(".content", el).after(p);
      }
      break;
  }
}

export function onEvents(frame) {
  const el = article(frame.message);
  if (!el || resuming.has(frame.message)) return;
  let last = lastSeq.has(frame.message) ? lastSeq.get(frame.message) : Number(el.dataset.seq || 0);
  keepingBottom(() => {
    for (const e of frame.events) {
      if (e.seq <= last) continue; // already in the page (from the HTML or a snapshot)
      last = e.seq;
      applyEvent(el, e);
    }
  });
  lastSeq.set(frame.message, last);
  el.dataset.seq = String(last);
  syncGenerating();
}

export function onSnapshot(frame) {
  const el = article(frame.message);
  if (!el) {
    // Started elsewhere while this page was away: fetch the branch that shows it, then catch up
    // on it (its events and final frame went nowhere while the page did not show it). A version
    // the fresh branch does not show either is left alone: resuming it would redraw forever.
    refreshThread(() => { if (article(frame.message)) resume(frame.message); });
    return;
  }
  resuming.delete(frame.message);
  keepingBottom(() => {
    const content = $(".content", el);
    if (ACTIVE.has(frame.status) || !content.classList.contains("markdown")) content.textContent = frame.content;
    if (frame.reasoning) {
      const details = ensureThinking(el);
      details.hidden = false;
      $(".reasoning", details).textContent = frame.reasoning;
      if (!frame.content && ACTIVE.has(frame.status)) {
        if (!details.dataset.userToggled) details.open = true;
        startTimer(el.dataset.message, details);
      }
    }
    if (frame.content || !ACTIVE.has(frame.status)) endThinking(el);
    setStatus(el, frame.status);
  });
  lastSeq.set(frame.message, frame.seq);
  el.dataset.seq = String(frame.seq);
  syncGenerating();
}

export function onFinal(frame) {
  const el = article(frame.message);
  resuming.delete(frame.message);
  if (!el) return;
  const keepOpen = $(".thinking", el)?.dataset.userToggled && $(".thinking", el).open;
  const fresh = fragment(frame.html);
  stopTimer(String(frame.message));
  keepingBottom(() => {
    el.replaceWith(fresh);
    htmx.process(fresh);
    if (keepOpen && $(".thinking", fresh)) $(".thinking", fresh).open = true;
  });
  syncGenerating();
  const status = fresh.dataset.status;
  const text = ($(".content", fresh)?.innerText || "").slice(0, 600);
  announce(status === "done" ? "Answer finished. " + text : "Answer " + status + ".");
}
