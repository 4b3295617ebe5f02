/* The message box at the bottom: its size, Enter to send, the Send/Stop swap while an answer is
 * being written, and the draft given back when the server refuses a message. The form itself is
 * sent by the ws extension (ws-send on #composer); beforeSend and afterSend see it go. */
import { $, $$, BUSY_CALLS, chatEl, composerInput, isActive } from "./dom.js";
import { showError } from "./feedback.js";
import { refuseIfClosed } from "./socket.js";

let draft = null; // what the composer held when it was sent, restored if the server refuses it

export function autosize(textarea) {
  textarea.style.height = "auto";
  textarea.style.height = textarea.scrollHeight + 2 + "px";
}

export function submitComposer() {
  const form = document.getElementById("composer");
  if (form) form.requestSubmit();
}

// Enter sends, Shift+Enter is a new line, and an IME composition keeps its Enter.
export function enterSends(evt, submit) {
  if (evt.key !== "Enter" || evt.shiftKey || evt.isComposing || evt.keyCode === 229) return false;
  evt.preventDefault();
  submit();
  return true;
}

export const generating = () => !!chatEl()?.hasAttribute("data-generating");

// Something is running (an answer, or a tool call still to run or decide): Stop instead of Send.
export function syncGenerating() {
  const chat = chatEl();
  if (!chat) return;
  const on = $$("#thread .msg").some(isActive) || !!$(BUSY_CALLS);
  const send = document.getElementById("send-button");
  const stop = document.getElementById("stop-button");
  const hadFocus = document.activeElement;
  chat.toggleAttribute("data-generating", on);
  if (send) send.hidden = on;
  if (stop) stop.hidden = !on;
  const region = document.getElementById("thread-region");
  if (region) region.setAttribute("aria-busy", on ? "true" : "false");
  // Keep keyboard focus when the button under it is swapped.
  if (on && hadFocus === send && stop) stop.focus();
  if (!on && hadFocus === stop) composerInput()?.focus();
}

// htmx:wsConfigSend: nothing after a final close, no empty message, one answer at a time.
export function beforeSend(evt) {
  if (refuseIfClosed()) {
    evt.preventDefault();
    return;
  }
  if (evt.target.id !== "composer") return;
  const content = (evt.detail.parameters.content || "").trim();
  if (!content) {
    evt.preventDefault();
    return;
  }
  if (generating()) {
    evt.preventDefault();
    showError("An answer is still being written: wait for it, or press Stop.");
    return;
  }
  showError("");
}

// htmx:wsAfterSend: empty the box, keeping the text until the server takes it.
export function afterSend(evt) {
  if (evt.target.id !== "composer") return;
  const input = composerInput();
  draft = input.value;
  input.value = "";
  autosize(input);
}

// The server refused a message: put the text back, unless the user has typed something since.
export function restoreDraft(action) {
  const input = composerInput();
  if (action === "send" && draft && input && !input.value) {
    input.value = draft;
    autosize(input);
  }
  draft = null;
}

export function forgetDraft() {
  draft = null;
}

// A suggestion button on an empty chat: send its text as if typed.
export function sendSuggestion(text) {
  const input = composerInput();
  input.value = text;
  autosize(input);
  submitComposer();
}

// The user's time zone, sent with each message (tools such as current_time read it).
export function fillTimeZone() {
  const zone = document.getElementById("composer-time-zone");
  try {
    if (zone) zone.value = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
  } catch (err) { /* an old browser: the chat keeps the zone it had */ }
}
