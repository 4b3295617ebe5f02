/* The chat page's live part. The server speaks JSON over the websocket (see chat/consumers.py),
 * so this file takes every frame before the htmx ws extension would try to swap it as HTML.
 * Model text is only ever written with textContent; HTML comes from the server's templates,
 * whose Markdown is sanitized there. */
(function () {
  "use strict";

  const ACTIVE = new Set(["pending", "streaming"]);
  // Tool calls still to run or decide: the turn goes on (chat/agent.py), so Stop shows.
  const BUSY_CALLS = '#thread .tool-call[data-status="pending"], #thread .tool-call[data-status="running"], '
    + '#thread .tool-call[data-status="awaiting"]';
  const RECONNECT_CODES = new Set([1006, 1011, 1012, 1013]);
  // Closes the server means (chat/socket_auth.py): say why, and never reconnect.
  const FINAL_CLOSES = {
    4401: "Signed out — sign in again.",
    4403: "This chat is not yours or was deleted.",
    4404: "This chat is not yours or was deleted.",
    4429: "Too many of your chat tabs are open — close some, then reload this one.",
  };
  let closedFor = null; // the final close code, once the server has ended this chat's socket
  const lastSeq = new Map(); // message id -> last event seq folded into the page
  const timers = new Map(); // message id -> reasoning timer
  // Messages whose page text is older than the events now arriving: they wait for the snapshot
  // a "resume" brings, since drawing those events onto the older text would leave a gap.
  const resuming = new Set();
  let socket = null; // the ws extension's public socket wrapper
  let everOpened = false;
  let draft = null; // what the composer held when it was sent, restored if the server refuses it

  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const chatEl = () => document.getElementById("chat");
  const article = (id) => document.getElementById("msg-" + id);
  const composerInput = () => document.getElementById("composer-input");
  const isActive = (el) => ACTIVE.has(el.dataset.status);

  function fragment(html) {
    const tpl = document.createElement("template");
    tpl.innerHTML = html.trim();
    return tpl.content.firstElementChild;
  }

  // ---- sending ------------------------------------------------------------------------
  function resume(id) {
    resuming.add(id);
    sendFrame({ action: "resume", message: id });
  }

  function sendFrame(frame) {
    if (closedFor) {
      showError(FINAL_CLOSES[closedFor]);
      return false;
    }
    if (!socket) {
      showError("Still connecting to the server: try again in a moment.");
      return false;
    }
    socket.send(JSON.stringify(frame)); // queued by the extension while reconnecting
    return true;
  }

  function showError(text) {
    const box = document.getElementById("composer-error");
    if (box) box.textContent = text || "";
  }

  function announce(text) {
    const box = document.getElementById("announcer");
    if (!box) return;
    box.textContent = "";
    // A fresh text node after a tick, so screen readers announce repeated messages too.
    setTimeout(() => { box.textContent = text; }, 50);
  }

  // ---- scrolling ----------------------------------------------------------------------
  function nearBottom() {
    const s = document.getElementById("scroller");
    return !s || s.scrollHeight - s.scrollTop - s.clientHeight < 120;
  }

  function toBottom() {
    const s = document.getElementById("scroller");
    if (s) s.scrollTop = s.scrollHeight;
  }

  function keepingBottom(fn) {
    const stick = nearBottom();
    fn();
    if (stick) toBottom();
  }

  // ---- generating state -----------------------------------------------------------------
  function syncGenerating() {
    const chat = chatEl();
    if (!chat) return;
    const on = $$("#thread .msg").some(isActive) || !!$(BUSY_CALLS);
    const send = document.getElementById("send-button");
    const stop = document.getElementById("stop-button");
    const hadFocus = document.activeElement;
    chat.toggleAttribute("data-generating", on);
    if (send) send.hidden = on;
    if (stop) stop.hidden = !on;
    const region = document.getElementById("thread-region");
    if (region) region.setAttribute("aria-busy", on ? "true" : "false");
    // Keep keyboard focus when the button under it is swapped.
    if (on && hadFocus === send && stop) stop.focus();
    if (!on && hadFocus === stop) composerInput()?.focus();
  }

  function setStatus(el, status) {
    el.dataset.status = status;
    el.className = el.className.replace(/\bstatus-\S+/, "status-" + status);
  }

  // ---- the thinking panel ---------------------------------------------------------------
  function ensureThinking(el) {
    let details = $(".thinking", el);
    if (!details) {
      details = document.createElement("details");
      details.className = "thinking";
      details.hidden = true;
      const summary = document.createElement("summary");
      const label = document.createElement("span");
      label.className = "thinking-label";
      label.textContent = "Thinking…";
      const time = document.createElement("span");
      time.className = "thinking-time";
      summary.append(label, " ", time);
      const body = document.createElement("div");
      body.className = "reasoning";
      details.append(summary, body);
      $(".content", el).before(details);
    }
    return details;
  }

  function startTimer(id, details) {
    if (timers.has(id)) return;
    const started = performance.now();
    const time = $(".thinking-time", details);
    const tick = () => { time.textContent = ((performance.now() - started) / 1000).toFixed(1) + " s"; };
    tick();
    timers.set(id, setInterval(tick, 100));
  }

  function stopTimer(id) {
    clearInterval(timers.get(id));
    timers.delete(id);
  }

  function appendReasoning(el, text) {
    const details = ensureThinking(el);
    if (details.hidden) {
      details.hidden = false;
      if (!details.dataset.userToggled && !details.dataset.done) details.open = true;
    }
    appendText($(".reasoning", details), text);
    if (!details.dataset.done) startTimer(el.dataset.message, details);
  }

  // The answer has started (or the message ended): fold the reasoning away.
  function endThinking(el) {
    const details = $(".thinking", el);
    stopTimer(el.dataset.message);
    if (!details || details.dataset.done) return;
    details.dataset.done = "1";
    $(".thinking-label", details).textContent = "Thought";
    if (!details.dataset.userToggled) details.open = false;
  }

  // ---- streaming text ---------------------------------------------------------------------
  function appendText(node, text) {
    const last = node.lastChild;
    if (last && last.nodeType === Node.TEXT_NODE) last.appendData(text);
    else node.append(text);
  }

  // "N requests ahead of you" while the device is busy with others; gone at the first token.
  function showQueue(el, ahead) {
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

  function applyEvent(el, e) {
    if (e.kind === "text" || e.kind === "reasoning" || e.kind === "done") showQueue(el, null);
    switch (e.kind) {
      case "queue":
        showQueue(el, e.ahead);
        break;
      case "start":
        setStatus(el, "streaming");
        announce("Generating an answer…");
        break;
      case "text":
        if (e.text) {
          endThinking(el);
          appendText($(".content", el), e.text);
        }
        break;
      case "reasoning":
        if (e.text) appendReasoning(el, e.text);
        break;
      case "notice":
        if (e.dropped_turns) {
          const note = document.createElement("p");
          note.className = "msg-state msg-note";
          note.textContent = e.dropped_turns + " earlier message(s) left out to fit the model's context.";
          $(".content", el).after(note);
        }
        break;
      case "done":
        endThinking(el);
        setStatus(el, e.status || "done");
        if (e.error) {
          const p = document.createElement("p");
          p.className = "msg-state msg-error";
          p.textContent = "Error: " + e.error;
          $(".content", el).after(p);
        }
        break;
    }
  }

  function onEvents(frame) {
    const el = article(frame.message);
    if (!el || resuming.has(frame.message)) return;
    let last = lastSeq.has(frame.message) ? lastSeq.get(frame.message) : Number(el.dataset.seq || 0);
    keepingBottom(() => {
      for (const e of frame.events) {
        if (e.seq <= last) continue; // already in the page (from the HTML or a snapshot)
        last = e.seq;
        applyEvent(el, e);
      }
    });
    lastSeq.set(frame.message, last);
    el.dataset.seq = String(last);
    syncGenerating();
  }

  function onSnapshot(frame) {
    const el = article(frame.message);
    if (!el) {
      // Started elsewhere while this page was away: fetch the branch that shows it, then catch up
      // on it (its events and final frame went nowhere while the page did not show it). A version
      // the fresh branch does not show either is left alone: resuming it would redraw forever.
      refreshThread(() => { if (article(frame.message)) resume(frame.message); });
      return;
    }
    resuming.delete(frame.message);
    keepingBottom(() => {
      const content = $(".content", el);
      if (ACTIVE.has(frame.status) || !content.classList.contains("markdown")) content.textContent = frame.content;
      if (frame.reasoning) {
        const details = ensureThinking(el);
        details.hidden = false;
        $(".reasoning", details).textContent = frame.reasoning;
        if (!frame.content && ACTIVE.has(frame.status)) {
          if (!details.dataset.userToggled) details.open = true;
          startTimer(el.dataset.message, details);
        }
      }
      if (frame.content || !ACTIVE.has(frame.status)) endThinking(el);
      setStatus(el, frame.status);
    });
    lastSeq.set(frame.message, frame.seq);
    el.dataset.seq = String(frame.seq);
    syncGenerating();
  }

  function onFinal(frame) {
    const el = article(frame.message);
    resuming.delete(frame.message);
    if (!el) return;
    const keepOpen = $(".thinking", el)?.dataset.userToggled && $(".thinking", el).open;
    const fresh = fragment(frame.html);
    stopTimer(String(frame.message));
    keepingBottom(() => {
      el.replaceWith(fresh);
      htmx.process(fresh);
      if (keepOpen && $(".thinking", fresh)) $(".thinking", fresh).open = true;
    });
    syncGenerating();
    const status = fresh.dataset.status;
    const text = ($(".content", fresh)?.innerText || "").slice(0, 600);
    announce(status === "done" ? "Answer finished. " + text : "Answer " + status + ".");
  }

  // A tool call of an answer changed: the server sends the answer again, with its cards. Cards
  // the user opened stay open.
  function onTools(frame) {
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

  // ---- whole-thread updates -------------------------------------------------------------
  // Messages the new HTML shows mid-stream continue from the seq it was rendered at; when the
  // page had already shown more than that, ask the server for a fresh snapshot.
  function adoptThread(root) {
    for (const el of $$(".msg", root)) {
      if (!isActive(el)) continue;
      const id = Number(el.dataset.message);
      const seq = Number(el.dataset.seq || 0);
      const behind = lastSeq.has(id) && lastSeq.get(id) > seq;
      lastSeq.set(id, seq);
      const details = $(".thinking", el);
      if (details && !details.hidden && !$(".content", el).textContent) startTimer(String(id), details);
      if (behind) resume(id);
    }
    syncGenerating();
  }

  function replaceThread(html) {
    const old = document.getElementById("thread");
    const fresh = fragment(html);
    old.replaceWith(fresh);
    htmx.process(fresh);
    adoptThread(fresh);
    return fresh;
  }

  function refreshThread(then) {
    const url = chatEl()?.dataset.threadUrl;
    if (!url) return;
    fetch(url, { headers: { "HX-Request": "true" }, credentials: "same-origin" })
      .then((r) => (r.ok ? r.text() : Promise.reject(r.status)))
      .then((html) => {
        replaceThread(html);
        if (then) then();
      })
      .catch(() => showError("Could not reload the conversation: check your connection."));
  }

  function resumeActive() {
    for (const el of $$("#thread .msg")) {
      if (isActive(el)) resume(Number(el.dataset.message));
    }
  }

  function setTitle(title) {
    if (!title) return;
    document.title = title + " · smolsite";
    const heading = document.getElementById("conversation-title");
    if (heading) heading.textContent = title;
    const id = chatEl()?.dataset.conversation;
    const item = document.querySelector('.conv-item[data-conversation="' + id + '"] .conv-title');
    if (item) item.textContent = title;
    // The list is ordered by activity: let the server redraw it (keeping any search).
    htmx.trigger(document.body, "conversations-changed");
  }

  function onThread(frame) {
    showError("");
    draft = null;
    stopAllTimers();
    replaceThread(frame.html);
    if (frame.active != null) lastSeq.set(frame.active, 0);
    setTitle(frame.title);
    toBottom();
  }

  function onError(frame) {
    showError(frame.error);
    const input = composerInput();
    if (frame.action === "send" && draft && input && !input.value) {
      input.value = draft;
      autosize(input);
    }
    draft = null;
    for (const button of $$(".edit-form button[type=submit]")) button.disabled = false;
    for (const button of $$(".tool-approval button")) button.disabled = false;
    // The page thought something was running and the server says not: catch up.
    if (frame.action === "stop") resumeActive();
    if (frame.action === "approve" || frame.action === "deny" || (frame.action === "stop" && $(BUSY_CALLS))) {
      refreshThread();
    }
  }

  function stopAllTimers() {
    for (const id of Array.from(timers.keys())) stopTimer(id);
  }

  const handlers = { thread: onThread, events: onEvents, snapshot: onSnapshot, final: onFinal, error: onError,
                     tools: onTools };

  // ---- websocket lifecycle ------------------------------------------------------------
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
    if (everOpened) {
      // Turns may have happened while we were away: redraw, then catch up on anything running.
      refreshThread(resumeActive);
    } else {
      // The page was rendered before the socket existed; an answer shown as running may have
      // finished in between, and the server only volunteers a snapshot for one still running.
      resumeActive();
    }
    everOpened = true;
  });

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

  document.addEventListener("htmx:wsConfigSend", (evt) => {
    if (closedFor) {
      evt.preventDefault();
      showError(FINAL_CLOSES[closedFor]);
      return;
    }
    if (evt.target.id !== "composer") return;
    const content = (evt.detail.parameters.content || "").trim();
    if (!content) {
      evt.preventDefault();
      return;
    }
    if (chatEl()?.hasAttribute("data-generating")) {
      evt.preventDefault();
      showError("An answer is still being written: wait for it, or press Stop.");
      return;
    }
    showError("");
  });

  document.addEventListener("htmx:wsAfterSend", (evt) => {
    if (evt.target.id !== "composer") return;
    const input = composerInput();
    draft = input.value;
    input.value = "";
    autosize(input);
  });

  // ---- composer ---------------------------------------------------------------------------
  function autosize(textarea) {
    textarea.style.height = "auto";
    textarea.style.height = textarea.scrollHeight + 2 + "px";
  }

  function submitComposer() {
    const form = document.getElementById("composer");
    if (form) form.requestSubmit();
  }

  function enterSends(evt, submit) {
    if (evt.key !== "Enter" || evt.shiftKey || evt.isComposing || evt.keyCode === 229) return false;
    evt.preventDefault();
    submit();
    return true;
  }

  document.addEventListener("keydown", (evt) => {
    const t = evt.target;
    if (t.id === "composer-input") {
      enterSends(evt, submitComposer);
      return;
    }
    if (evt.key !== "Escape") return;
    if (t.closest?.(".rename-form")) {
      $("[data-rename-cancel]", t.closest(".rename-form"))?.click();
    } else if (document.getElementById("app")?.classList.contains("sidebar-open")) {
      toggleSidebar(false);
    } else if (!document.getElementById("settings-panel")?.hidden) {
      toggleSettings(false);
    }
  });

  document.addEventListener("input", (evt) => {
    if (evt.target.id === "composer-input" || evt.target.closest?.(".edit-form")) autosize(evt.target);
  });

  // ---- editing an earlier message -----------------------------------------------------------
  function openEditor(el) {
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
      if (!textarea.value.trim() || chatEl()?.hasAttribute("data-generating")) return;
      if (sendFrame({ action: "edit", message: id, content: textarea.value })) save.disabled = true;
    });

    content.hidden = true;
    footer.hidden = true;
    content.after(form);
    autosize(textarea);
    textarea.focus();
    textarea.setSelectionRange(textarea.value.length, textarea.value.length);
  }

  // ---- copying ------------------------------------------------------------------------------
  function copyText(text, button) {
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

  // ---- panels -------------------------------------------------------------------------------
  function toggleSidebar(open) {
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

  function toggleSettings(open) {
    const panel = document.getElementById("settings-panel");
    const toggle = $("[data-settings-toggle]");
    if (!panel) return;
    open = open ?? panel.hidden;
    panel.hidden = !open;
    if (toggle) toggle.setAttribute("aria-expanded", String(open));
    if (open) $("textarea, input:not([type=hidden]), select", panel)?.focus();
    else toggle?.focus();
  }

  document.addEventListener("click", (evt) => {
    const t = evt.target.closest("button, summary");
    if (!t) return;
    if (t.matches("summary") && t.parentElement.matches(".thinking")) {
      t.parentElement.dataset.userToggled = "1";
    } else if (t.id === "stop-button") {
      sendFrame({ action: "stop" });
    } else if (t.matches("[data-approve], [data-deny]")) {
      showError("");
      const approve = t.matches("[data-approve]");
      const call = Number(approve ? t.dataset.approve : t.dataset.deny);
      if (sendFrame({ action: approve ? "approve" : "deny", call })) {
        for (const b of $$("button", t.closest(".tool-approval"))) b.disabled = true;
      }
    } else if (t.matches("[data-edit]")) {
      openEditor(t.closest(".msg"));
    } else if (t.matches("[data-regenerate]")) {
      if (!chatEl()?.hasAttribute("data-generating")) {
        showError("");
        sendFrame({ action: "regenerate", message: Number(t.dataset.regenerate) });
      }
    } else if (t.matches("[data-copy]")) {
      copyText($(".content", t.closest(".msg")).innerText, t);
    } else if (t.matches("[data-suggest]")) {
      const input = composerInput();
      input.value = t.dataset.suggest;
      autosize(input);
      submitComposer();
    } else if (t.matches("[data-sidebar-toggle]")) {
      toggleSidebar();
    } else if (t.matches("[data-sidebar-close]")) {
      toggleSidebar(false);
    } else if (t.matches("[data-settings-toggle]")) {
      toggleSettings();
    } else if (t.matches("[data-settings-close]")) {
      toggleSettings(false);
    }
  });
  document.addEventListener("click", (evt) => {
    if (evt.target.matches?.(".backdrop")) toggleSidebar(false);
  });

  // ---- htmx requests (branch switches, settings, sidebar) -------------------------------------
  document.addEventListener("htmx:afterSwap", (evt) => {
    const target = evt.detail.target;
    if (target && target.id === "thread") {
      // hx-swap="outerHTML" leaves evt.detail.target detached; use the live element.
      adoptThread(document.getElementById("thread"));
    }
  });

  document.addEventListener("htmx:afterSettle", () => {
    // A settings form the server just sent (after a save or a model change) has no mark yet.
    const form = document.getElementById("settings-form");
    if (!form || form.dataset.settled) return;
    form.dataset.settled = "1";
    const model = document.getElementById("model-select")?.value;
    const shown = $(".empty-model strong");
    if (model && shown) shown.textContent = model;
    $("[aria-invalid=true]", form)?.focus();
  });

  document.addEventListener("htmx:responseError", (evt) => {
    const xhr = evt.detail.xhr;
    const plain = (xhr.getResponseHeader("Content-Type") || "").startsWith("text/plain");
    showError(plain && xhr.responseText ? xhr.responseText : "The server could not do that (" + xhr.status + ").");
  });

  document.addEventListener("htmx:sendError", () => showError("Could not reach the server: check your connection."));

  document.addEventListener("DOMContentLoaded", () => {
    const thread = document.getElementById("thread");
    if (!thread) return;
    // The user's time zone, sent with each message (tools such as current_time read it).
    const zone = document.getElementById("composer-time-zone");
    try {
      if (zone) zone.value = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
    } catch (err) { /* an old browser: the chat keeps the zone it had */ }
    adoptThread(thread);
    toBottom();
    const input = composerInput();
    if (input) autosize(input);
  });
})();
