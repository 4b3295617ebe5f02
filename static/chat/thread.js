/* The whole thread (#thread): a fresh one from the server (a "thread" frame after a send, edit or
 * regenerate, a fetch after a reconnect, or an htmx branch switch), picking up the answers it
 * shows mid-stream; and the conversation's title. */
import { $, $$, chatEl, fragment, isActive } from "./dom.js";
import { showError } from "./feedback.js";
import { toBottom } from "./scroll.js";
import { lastSeq, resume } from "./seq.js";
import { startTimer, stopAllTimers } from "./thinking.js";
import { forgetDraft, syncGenerating } from "./composer.js";

// Messages the new HTML shows mid-stream continue from the seq it was rendered at; when the
// page had already shown more than that, ask the server for a fresh snapshot.
export function adoptThread(root) {
  for (const el of $$(".msg", root)) {
    if (!isActive(el)) continue;
    const id = Number(el.dataset.message);
    const seq = Number(el.dataset.seq || 0);
    const behind = lastSeq.has(id) && lastSeq.get(id) > seq;
    lastSeq.set(id, seq);
    const details = $(".thinking", el);
    if (details && !details.hidden && !$(".content", el).textContent) startTimer(String(id), details);
    if (behind) resume(id);
  }
  syncGenerating();
}

function replaceThread(html) {
  const old = document.getElementById("thread");
  const fresh = fragment(html);
  old.replaceWith(fresh);
  htmx.process(fresh);
  adoptThread(fresh);
  return fresh;
}

export function refreshThread(then) {
  const url = chatEl()?.dataset.threadUrl;
  if (!url) return;
  fetch(url, { headers: { "HX-Request": "true" }, credentials: "same-origin" })
    .then((r) => (r.ok ? r.text() : Promise.reject(r.status)))
    .then((html) => {
      replaceThread(html);
      if (then) then();
    })
    .catch(() => showError("Could not reload the conversation: check your connection."));
}

function setTitle(title) {
  if (!title) return;
  document.title = title + " · smolsite";
  const heading = document.getElementById("conversation-title");
  if (heading) heading.textContent = title;
  const id = chatEl()?.dataset.conversation;
  const item = document.querySelector('.conv-item[data-conversation="' + id + '"] .conv-title');
  if (item) item.textContent = title;
  // The list is ordered by activity: let the server redraw it (keeping any search).
  htmx.trigger(document.body, "conversations-changed");
}

export function onThread(frame) {
  showError("");
  forgetDraft();
  stopAllTimers();
  replaceThread(frame.html);
  if (frame.active != null) lastSeq.set(frame.active, 0);
  setTitle(frame.title);
  toBottom();
}
