/* "N requests ahead of you" on an answer while the device is busy with others; gone at the first
 * token (or the end). */
import { $ } from "./dom.js";

// ahead: requests before this one, or null to take the note away.
export function showQueue(el, ahead) {
  let note = $(".msg-queue", el);
  if (ahead === null) {
    if (note) note.remove();
    return;
  }
  if (!note) {
    note = document.createElement("p");
    note.className = "msg-state msg-queue";
    note.setAttribute("role", "status");
    $(".content", el).before(note);
  }
  note.textContent = ahead === 0 ? "Waiting for the model: you're next…"
    : "Waiting for the model: " + ahead + (ahead === 1 ? " request" : " requests") + " ahead of you…";
}
