/* The chat page's live part: the entry that templates/chat/conversation.html loads as a module
 * (after htmx and its ws extension, all deferred, so in that order). It routes the socket's
 * frames and the page's events to the modules that own them; see "Front end" in
 * docs/architecture.md. HTML comes only from the server's templates, whose Markdown is
 * sanitized there; model text is only ever written as text. */
import { $, BUSY_CALLS, composerInput } from "./dom.js";
import { showError } from "./feedback.js";
import { toBottom } from "./scroll.js";
import { connectSocket, sendFrame } from "./socket.js";
import { resumeActive } from "./seq.js";
import { onEvents, onFinal, onSnapshot } from "./stream.js";
import { adoptThread, onThread, refreshThread } from "./thread.js";
import { decide, enableDecisions, onTools } from "./tools.js";
import {
  afterSend, autosize, beforeSend, enterSends, fillTimeZone, generating, restoreDraft, sendSuggestion,
  submitComposer,
} from "./composer.js";
import { enableEditors, openEditor } from "./editor.js";
import { copyText } from "./copy.js";
import { escape, settleSettings, toggleSettings, toggleSidebar } from "./panels.js";

// The server refused an action: say why, and give back what the page held for it.
function onError(frame) {
  showError(frame.error);
  restoreDraft(frame.action);
  enableEditors();
  enableDecisions();
  // The page thought something was running and the server says not: catch up.
  if (frame.action === "stop") resumeActive();
  if (frame.action === "approve" || frame.action === "deny" || (frame.action === "stop" && $(BUSY_CALLS))) {
    refreshThread();
  }
}

connectSocket(
  { thread: onThread, events: onEvents, snapshot: onSnapshot, final: onFinal, error: onError, tools: onTools },
  (again) => {
    if (again) {
      // Turns may have happened while we were away: redraw, then catch up on anything running.
      refreshThread(resumeActive);
    } else {
      // The page was rendered before the socket existed; an answer shown as running may have
      // finished in between, and the server only volunteers a snapshot for one still running.
      resumeActive();
    }
  },
);

document.addEventListener("htmx:wsConfigSend", beforeSend);
document.addEventListener("htmx:wsAfterSend", afterSend);

document.addEventListener("keydown", (evt) => {
  const t = evt.target;
  if (t.id === "composer-input") {
    enterSends(evt, submitComposer);
    return;
  }
  if (evt.key === "Escape") escape(t);
});

document.addEventListener("input", (evt) => {
  if (evt.target.id === "composer-input" || evt.target.closest?.(".edit-form")) autosize(evt.target);
});

document.addEventListener("click", (evt) => {
  const t = evt.target.closest("button, summary");
  if (!t) return;
  if (t.matches("summary") && t.parentElement.matches(".thinking")) {
    t.parentElement.dataset.userToggled = "1";
  } else if (t.id === "stop-button") {
    sendFrame({ action: "stop" });
  } else if (t.matches("[data-approve], [data-deny]")) {
    decide(t);
  } else if (t.matches("[data-edit]")) {
    openEditor(t.closest(".msg"));
  } else if (t.matches("[data-regenerate]")) {
    if (!generating()) {
      showError("");
      sendFrame({ action: "regenerate", message: Number(t.dataset.regenerate) });
    }
  } else if (t.matches("[data-copy]")) {
    copyText($(".content", t.closest(".msg")).innerText, t);
  } else if (t.matches("[data-suggest]")) {
    sendSuggestion(t.dataset.suggest);
  } else if (t.matches("[data-sidebar-toggle]")) {
    toggleSidebar();
  } else if (t.matches("[data-sidebar-close]")) {
    toggleSidebar(false);
  } else if (t.matches("[data-settings-toggle]")) {
    toggleSettings();
  } else if (t.matches("[data-settings-close]")) {
    toggleSettings(false);
  }
});
document.addEventListener("click", (evt) => {
  if (evt.target.matches?.(".backdrop")) toggleSidebar(false);
});

// ---- htmx requests (branch switches, settings, sidebar) -------------------------------------
document.addEventListener("htmx:afterSwap", (evt) => {
  const target = evt.detail.target;
  if (target && target.id === "thread") {
    // hx-swap="outerHTML" leaves evt.detail.target detached; use the live element.
    adoptThread(document.getElementById("thread"));
  }
});

document.addEventListener("htmx:afterSettle", settleSettings);

document.addEventListener("htmx:responseError", (evt) => {
  const xhr = evt.detail.xhr;
  const plain = (xhr.getResponseHeader("Content-Type") || "").startsWith("text/plain");
  showError(plain && xhr.responseText ? xhr.responseText : "The server could not do that (" + xhr.status + ").");
});

document.addEventListener("htmx:sendError", () => showError("Could not reach the server: check your connection."));

document.addEventListener("DOMContentLoaded", () => {
  const thread = document.getElementById("thread");
  if (!thread) return;
  fillTimeZone();
  adoptThread(thread);
  toBottom();
  const input = composerInput();
  if (input) autosize(input);
});
