/* How far each message's numbered events have been folded into the page, and catching up: a
 * "resume" asks the server for a snapshot of a message, and its events wait until it comes. */
import { $$, isActive } from "./dom.js";
import { sendFrame } from "./socket.js";

export const lastSeq = new Map(); // message id -> last event seq folded into the page
// Messages whose page text is older than the events now arriving: they wait for the snapshot
// a "resume" brings, since drawing those events onto the older text would leave a gap.
export const resuming = new Set();

export function resume(id) {
  resuming.add(id);
  sendFrame({ action: "resume", message: id });
}

export function resumeActive() {
  for (const el of $$("#thread .msg")) {
    if (isActive(el)) resume(Number(el.dataset.message));
  }
}
