/* The Copy button of a message ([data-copy]): the clipboard API where the page may use it (a
 * secure context), else a hidden textarea and execCommand. */
import { announce } from "./feedback.js";

export function copyText(text, button) {
  const done = () => {
    const old = button.title;
    button.title = "Copied";
    announce("Copied to the clipboard.");
    setTimeout(() => { button.title = old; }, 1500);
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, () => {});
    return;
  }
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.style.position = "fixed";
  area.style.opacity = "0";
  document.body.append(area);
  area.select();
  try {
    document.execCommand("copy");
    done();
  } finally {
    area.remove();
  }
}
