/* The thread's scroller: follow new text only while the reader is at the bottom. */

function nearBottom() {
  const s = document.getElementById("scroller");
  return !s || s.scrollHeight - s.scrollTop - s.clientHeight < 120;
}

export function toBottom() {
  const s = document.getElementById("scroller");
  if (s) s.scrollTop = s.scrollHeight;
}

export function keepingBottom(fn) {
  const stick = nearBottom();
  fn();
  if (stick) toBottom();
}
