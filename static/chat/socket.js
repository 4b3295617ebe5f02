/* The page's websocket, through the htmx ws extension (hx-ext="ws" on #chat): every frame the
 * server sends is JSON (see chat/consumers.py), taken here before the extension would try to swap
 * it as HTML and handed to the handler for its "type". Sending, the connection banner, and the
 * closes the server means (chat/socket_auth.py), after which the page never reconnects. */
import { chatEl } from "./dom.js";
import { showError } from "./feedback.js";

const RECONNECT_CODES = new Set([1006, 1011, 1012, 1013]);
// Closes the server means: say why, and never reconnect.
const FINAL_CLOSES = {
  4401: "Signed out — sign in again.",
  4403: "This chat is not yours or was deleted.",
  4404: "This chat is not yours or was deleted.",
  4429: "Too many of your chat tabs are open — close some, then reload this one.",
};
let closedFor = null; // the final close code, once the server has ended this chat's socket
let socket = null; // the ws extension's public socket wrapper
let everOpened = false;

// After a final close nothing more is sent: say why, and tell the caller to stop.
export function refuseIfClosed() {
  if (!closedFor) return false;
  showError(FINAL_CLOSES[closedFor]);
  return true;
}

export function sendFrame(frame) {
  if (refuseIfClosed()) return false;
  if (!socket) {
    showError("Still connecting to the server: try again in a moment.");
    return false;
  }
  socket.send(JSON.stringify(frame)); // queued by the extension while reconnecting
  return true;
}

function showFinalClose(banner, code) {
  banner.textContent = FINAL_CLOSES[code] + " ";
  const link = document.createElement("a");
  if (code === 4401) {
    link.href = "/accounts/login/?next=" + encodeURIComponent(location.pathname);
    link.textContent = "Sign in";
  } else if (code === 4429) {
    link.href = location.pathname;
    link.textContent = "Reload";
  } else {
    link.href = "/";
    link.textContent = "Open your chats";
  }
  banner.append(link);
  banner.dataset.closed = String(code);
  banner.hidden = false;
}

/* handlers: frame type -> function(frame). opened(again): called on each open, again true when
 * the socket had been open before (a reconnect). */
export function connectSocket(handlers, opened) {
  document.addEventListener("htmx:wsBeforeMessage", (evt) => {
    evt.preventDefault(); // every frame is JSON: never let the extension swap it as HTML
    let frame;
    try {
      frame = JSON.parse(evt.detail.message);
    } catch (err) {
      return;
    }
    const handle = handlers[frame.type];
    if (handle) handle(frame);
  });

  document.addEventListener("htmx:wsOpen", (evt) => {
    socket = evt.detail.socketWrapper;
    const banner = document.getElementById("connection");
    if (banner) banner.hidden = true;
    opened(everOpened);
    everOpened = true;
  });

  document.addEventListener("htmx:wsClose", (evt) => {
    const code = evt.detail.event?.code;
    const banner = document.getElementById("connection");
    if (FINAL_CLOSES[code]) {
      closedFor = code;
      socket = null;
      chatEl()?.setAttribute("data-closed", String(code));
      if (banner) showFinalClose(banner, code);
    } else if (banner && RECONNECT_CODES.has(code)) {
      banner.textContent = "Connection lost: reconnecting…";
      banner.hidden = false;
    }
  });
}
