/* The side panels: the chat list (#sidebar, a drawer on narrow screens) and the settings panel,
 * with Escape to close them; and the settings form the server sends back after a change. */
import { $ } from "./dom.js";

export function toggleSidebar(open) {
  const app = document.getElementById("app");
  const toggle = $("[data-sidebar-toggle]");
  if (!app) return;
  open = open ?? !app.classList.contains("sidebar-open");
  app.classList.toggle("sidebar-open", open);
  $(".backdrop", app).hidden = !open;
  if (toggle) toggle.setAttribute("aria-expanded", String(open));
  if (open) $("#sidebar .new-chat button")?.focus();
  else toggle?.focus();
}

export function toggleSettings(open) {
  const panel = document.getElementById("settings-panel");
  const toggle = $("[data-settings-toggle]");
  if (!panel) return;
  open = open ?? panel.hidden;
  panel.hidden = !open;
  if (toggle) toggle.setAttribute("aria-expanded", String(open));
  if (open) $("textarea, input:not([type=hidden]), select", panel)?.focus();
  else toggle?.focus();
}

// Escape (outside the message box): cancel a rename, else close the open drawer or panel.
export function escape(target) {
  if (target.closest?.(".rename-form")) {
    $("[data-rename-cancel]", target.closest(".rename-form"))?.click();
  } else if (document.getElementById("app")?.classList.contains("sidebar-open")) {
    toggleSidebar(false);
  } else if (!document.getElementById("settings-panel")?.hidden) {
    toggleSettings(false);
  }
}

// htmx:afterSettle: a settings form the server just sent (after a save or a model change) has
// no mark yet; show its model on an empty chat and focus its first invalid field.
export function settleSettings() {
  const form = document.getElementById("settings-form");
  if (!form || form.dataset.settled) return;
  form.dataset.settled = "1";
  const model = document.getElementById("model-select")?.value;
  const shown = $(".empty-model strong");
  if (model && shown) shown.textContent = model;
  $("[aria-invalid=true]", form)?.focus();
}
