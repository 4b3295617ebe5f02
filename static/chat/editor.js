/* Editing an earlier message of the user's in place ([data-edit]): a small form under the
 * message that sends an "edit" action, which starts a new branch from there. */
import { $, $$ } from "./dom.js";
import { sendFrame } from "./socket.js";
import { autosize, enterSends, generating } from "./composer.js";

export function openEditor(el) {
  const existing = $(".edit-form textarea", el);
  if (existing) {
    existing.focus();
    return;
  }
  const id = Number(el.dataset.message);
  const content = $(".content", el);
  const footer = $(".msg-footer", el);
  const form = document.createElement("form");
  form.className = "edit-form";
  const label = document.createElement("label");
  label.className = "visually-hidden";
  label.htmlFor = "edit-" + id;
  label.textContent = "Edit your message";
  const textarea = document.createElement("textarea");
  textarea.id = "edit-" + id;
  textarea.value = content.textContent;
  const row = document.createElement("div");
  row.className = "edit-actions";
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.className = "button small";
  cancel.textContent = "Cancel";
  const save = document.createElement("button");
  save.type = "submit";
  save.className = "button small primary";
  save.textContent = "Send";
  row.append(cancel, save);
  form.append(label, textarea, row);

  const close = () => {
    form.remove();
    content.hidden = false;
    footer.hidden = false;
    $("[data-edit]", el)?.focus();
  };
  cancel.addEventListener("click", close);
  textarea.addEventListener("keydown", (evt) => {
    if (evt.key === "Escape") close();
    else enterSends(evt, () => form.requestSubmit());
  });
  form.addEventListener("submit", (evt) => {
    evt.preventDefault();
    if (!textarea.value.trim() || generating()) return;
    if (sendFrame({ action: "edit", message: id, content: textarea.value })) save.disabled = true;
  });

  content.hidden = true;
  footer.hidden = true;
  content.after(form);
  autosize(textarea);
  textarea.focus();
  textarea.setSelectionRange(textarea.value.length, textarea.value.length);
}

// The server refused an edit: its Send buttons work again.
export function enableEditors() {
  for (const button of $$(".edit-form button[type=submit]")) button.disabled = false;
}
