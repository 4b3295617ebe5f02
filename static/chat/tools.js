/* Tool-call cards (templates/chat/_tool_call.html): redrawn when a call changes, and the
 * Approve/Deny buttons of a call that waits for the user. */
import { $, $$, article, fragment, isActive } from "./dom.js";
import { announce, showError } from "./feedback.js";
import { keepingBottom } from "./scroll.js";
import { sendFrame } from "./socket.js";
import { syncGenerating } from "./composer.js";

// A tool call of an answer changed: the server sends the answer again, with its cards. Cards
// the user opened stay open.
export function onTools(frame) {
  const el = article(frame.message);
  if (!el || isActive(el)) return;
  const open = new Set($$(".tool-call details[open]", el).map((d) => d.closest(".tool-call").id));
  const fresh = fragment(frame.html);
  keepingBottom(() => {
    el.replaceWith(fresh);
    htmx.process(fresh);
    for (const id of open) {
      const details = $("#" + id + " details", fresh);
      if (details) details.open = true;
    }
  });
  syncGenerating();
  for (const card of $$(".tool-call", fresh)) {
    const status = card.dataset.status;
    const name = $(".tool-name", card)?.textContent || "tool";
    if (card.dataset.status === "awaiting") announce("The model wants to run " + name + ": approve or deny it.");
    else if (status !== "pending") announce(name + ": " + ($(".tool-status", card)?.textContent || status));
  }
}

// A click on [data-approve] or [data-deny]: send the decision, and hold both buttons until the
// server answers (a "tools" frame redraws the card; an "error" frame gives them back).
export function decide(button) {
  showError("");
  const approve = button.matches("[data-approve]");
  const call = Number(approve ? button.dataset.approve : button.dataset.deny);
  if (sendFrame({ action: approve ? "approve" : "deny", call })) {
    for (const b of $$("button", button.closest(".tool-approval"))) b.disabled = true;
  }
}

export function enableDecisions() {
  for (const button of $$(".tool-approval button")) button.disabled = false;
}
