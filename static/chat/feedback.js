/* Telling the user: the composer's error line, and the screen-reader announcer. */

export function showError(text) {
  const box = document.getElementById("composer-error");
  if (box) box.textContent = text || "";
}

export function announce(text) {
  const box = document.getElementById("announcer");
  if (!box) return;
  box.textContent = "";
  // A fresh text node after a tick, so screen readers announce repeated messages too.
  setTimeout(() => { box.textContent = text; }, 50);
}
