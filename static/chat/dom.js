/* Finding things on the chat page, and the few DOM helpers every part uses. The ids and classes
 * are the templates' (templates/chat/_message.html lists what the page relies on). */

// A message still being written.
export const ACTIVE = new Set(["pending", "streaming"]);
// Tool calls still to run or decide: the turn goes on (chat/agent.py), so Stop shows.
export const BUSY_CALLS = '#thread .tool-call[data-status="pending"], #thread .tool-call[data-status="running"], '
  + '#thread .tool-call[data-status="awaiting"]';

export const $ = (sel, root) => (root || document).querySelector(sel);
export const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
export const chatEl = () => document.getElementById("chat");
export const article = (id) => document.getElementById("msg-" + id);
export const composerInput = () => document.getElementById("composer-input");
export const isActive = (el) => ACTIVE.has(el.dataset.status);

// One element from HTML the server rendered (its templates, its sanitized Markdown).
export function fragment(html) {
  const tpl = document.createElement("template");
  tpl.innerHTML = html.trim();
  return tpl.content.firstElementChild;
}

// Model text goes in as text only, grown onto the last text node.
export function appendText(node, text) {
  const last = node.lastChild;
  if (last && last.nodeType === Node.TEXT_NODE) last.appendData(text);
  else node.append(text);
}

export function setStatus(el, status) {
  el.dataset.status = status;
  el.className = el.className.replace(/\bstatus-\S+/, "status-" + status);
}
