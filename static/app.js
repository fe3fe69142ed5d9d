"use strict";
// Progressive enhancement: without this file the form posts and the page reloads (same server code).
// With it, a turn streams: the form is posted to /turns and the reply arrives as Server-Sent Events
// over the fetch response. Text is shown with textContent while it streams; when the reply is done
// the server's sanitised HTML replaces it. No inline scripts, no dependencies, no build step.
(function () {
  const form = document.getElementById("composer");
  const box = document.getElementById("message");
  const log = document.querySelector('[data-role="log"]');
  if (!form || !box || !log || !window.fetch || !window.ReadableStream) return;

  const errorBox = document.getElementById("error");
  const hint = document.getElementById("hint");
  const announcer = document.getElementById("announce");
  const editField = form.querySelector('input[name="edit"]');
  let busy = false;
  let followScroll = true;

  // --- small helpers -----------------------------------------------------------------------------
  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = !message;
  }
  function messageCount() {
    return log.querySelectorAll('[data-role="user"], [data-role="assistant"]').length;
  }
  function scrollToEnd(force) {
    if (force || followScroll) window.scrollTo(0, document.body.scrollHeight);
  }
  // Follow the reply only while the reader is at the bottom; scrolling up stops it, back down resumes.
  window.addEventListener("scroll", function () {
    followScroll = window.innerHeight + window.scrollY >= document.body.scrollHeight - 80;
  }, { passive: true });

  // --- copy buttons ------------------------------------------------------------------------------
  function copyButton(getText, label) {
    const button = el("button", { type: "button", class: "secondary small copy", "aria-label": label }, "Copy");
    button.addEventListener("click", async function () {
      try {
        await navigator.clipboard.writeText(getText());
        button.textContent = "Copied";
      } catch (e) {
        button.textContent = "Copy failed";
      }
      setTimeout(function () { button.textContent = "Copy"; }, 1500);
    });
    return button;
  }
  function addCopyButtons(article) {
    const text = article.querySelector("[data-role]");
    if (!text || article.querySelector(":scope > .tools > .copy")) return;
    let tools = article.querySelector(":scope > .tools");
    if (!tools) { tools = el("div", { class: "tools" }); article.appendChild(tools); }
    const who = text.dataset.role === "user" ? "your message" : "the reply";
    tools.prepend(copyButton(function () { return text.innerText; }, "Copy " + who));
    text.querySelectorAll("pre").forEach(function (pre, i) {
      const code = pre.querySelector("code") || pre;
      pre.appendChild(copyButton(function () { return code.innerText; }, "Copy code block " + (i + 1)));
    });
  }
  log.querySelectorAll("article.msg:not(.writing)").forEach(addCopyButtons);

  // --- the message box ---------------------------------------------------------------------------
  function grow() {
    box.style.height = "auto";
    box.style.height = Math.min(box.scrollHeight + 2, window.innerHeight * 0.5) + "px";
  }
  box.addEventListener("input", grow);
  box.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit(form.querySelector('button[type="submit"]:not([formaction]):not([name])'));
    }
  });
  grow();

  // --- a turn ------------------------------------------------------------------------------------
  function pendingArticle(turn) {
    const article = el("article", { class: "msg assistant writing", "aria-label": "Assistant", "aria-busy": "true" });
    const text = el("div", { class: "text md", "data-role": "assistant" });
    const thinking = el("p", { class: "thinking" }, "Thinking… 0 s");
    const tools = el("div", { class: "tools" });
    const stop = el("button", { type: "button", class: "secondary small", "data-action": "stop" }, "Stop");
    tools.appendChild(stop);
    article.append(text, thinking, tools);
    const started = Date.now();
    const timer = setInterval(function () {
      thinking.textContent = "Thinking… " + Math.round((Date.now() - started) / 1000) + " s";
    }, 1000);
    const view = { article, text, thinking, stop, timer, turn: turn || null, received: "" };
    stop.addEventListener("click", function () { stopTurn(view); });
    return view;
  }

  async function stopTurn(view) {
    view.stop.disabled = true;
    if (!view.turn) return;
    const body = new URLSearchParams({ turn: view.turn });
    try {
      await fetch("/stop", { method: "POST", body, headers: { Accept: "application/json" } });
    } catch (e) { /* the stream's end or a reload shows the outcome */ }
  }

  // Read SSE events from a fetch response body, calling handle(kind, data) for each.
  async function readEvents(response, handle) {
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let kind = "message", data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) kind = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
        }
        if (data) handle(kind, JSON.parse(data));
      }
    }
  }

  // Apply one stream's events to the pending view. Resolves to true once the reply has ended.
  async function follow(response, view) {
    let ended = false;
    await readEvents(response, function (kind, data) {
      if (kind === "snapshot") {
        view.turn = data.turn || view.turn;
      } else if (kind === "queued") {
        view.thinking.textContent = data.message;
      } else if (kind === "delta") {
        if (!view.received) view.thinking.hidden = true;
        view.received += data;
        view.text.textContent = view.received; // text, never HTML, while streaming
        scrollToEnd(false);
      } else if (kind === "done" || kind === "error") {
        ended = true;
        finish(view, kind, data);
      }
    });
    return ended;
  }

  function finish(view, kind, data) {
    clearInterval(view.timer);
    busy = false;
    const article = view.article;
    if (kind === "error" && data.unsent && view.user) {
      // Never started (another reply kept the conversation busy): nothing was stored, so the
      // message goes back in the box rather than away with a reload.
      view.user.remove();
      article.remove();
      box.value = view.sentText;
      grow();
      showError(data.message);
      refreshTools();
      return;
    }
    // Anything but a plain finished reply (an error, a turn from another tab) is shown as stored.
    if (kind === "error" || data.count !== messageCount()) {
      window.location.reload();
      return;
    }
    view.text.innerHTML = data.html; // sanitised on the server (markdown-it-py + nh3)
    view.thinking.remove();
    view.stop.parentNode.remove();
    article.classList.remove("writing");
    article.removeAttribute("aria-busy");
    if (data.note) {
      article.classList.add("cut");
      article.insertBefore(el("p", { class: "note" }, data.note), article.querySelector(".tools"));
    }
    addCopyButtons(article);
    refreshTools();
    announcer.textContent = "Reply finished: " + view.text.innerText.slice(0, 500);
    scrollToEnd(false);
  }

  // Regenerate and Edit belong to the last turn only; rebuild them after each turn.
  function refreshTools() {
    log.querySelectorAll('[data-action="regenerate"], [data-action="edit"]').forEach(function (b) { b.remove(); });
    const articles = log.querySelectorAll("article.msg");
    const last = articles[articles.length - 1], prev = articles[articles.length - 2];
    if (!last || !prev) return;
    const regen = el("button", { type: "submit", form: "composer", name: "regenerate", value: "1",
      class: "secondary small", formnovalidate: "", "data-action": "regenerate" }, "Regenerate");
    last.querySelector(".tools").appendChild(regen);
    let tools = prev.querySelector(".tools");
    if (!tools) { tools = el("div", { class: "tools" }); prev.appendChild(tools); }
    const edit = el("button", { type: "button", class: "secondary small", "data-action": "edit" }, "Edit");
    tools.appendChild(edit);
  }

  async function resume(view) {
    // After a reload or a dropped connection: follow the reply from the server again.
    for (let attempt = 0; attempt < 30; attempt++) {
      try {
        const response = await fetch("/turns/" + encodeURIComponent(view.turn), { headers: { Accept: "text/event-stream" } });
        if (!response.ok) break;
        view.received = "";
        if (await follow(response, view)) return;
      } catch (e) { /* network trouble: wait and try again */ }
      await new Promise(function (r) { setTimeout(r, 2000); });
    }
    window.location.reload();
  }

  async function send(submitter) {
    const data = new FormData(form, submitter);
    const regenerate = data.get("regenerate") === "1";
    const text = String(data.get("message") || "");
    if (!regenerate && !text.trim()) {
      hint.textContent = "Type a message first: an empty message is not sent.";
      hint.hidden = false;
      box.setAttribute("aria-invalid", "true");
      box.focus();
      return;
    }
    busy = true;
    hint.hidden = true;
    box.removeAttribute("aria-invalid");
    showError("");
    let response;
    try {
      response = await fetch("/turns", { method: "POST", body: new URLSearchParams(data), headers: { Accept: "text/event-stream" } });
    } catch (e) {
      busy = false;
      showError("Could not reach the chat server. Your message is kept in the box; try again.");
      return;
    }
    if (!response.ok) {
      busy = false;
      let message = "The message could not be sent (" + response.status + ").";
      try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
      showError(message);
      return;
    }
    // Accepted: show the turn at once. Regenerate and Edit replace the last turn.
    const articles = log.querySelectorAll("article.msg");
    const users = log.querySelectorAll('[data-role="user"]');
    const shownText = regenerate ? users[users.length - 1].textContent : text;
    if (regenerate || data.get("edit") === "1") {
      const lastUser = articles[articles.length - 2];
      articles[articles.length - 1].remove();
      lastUser.remove();
    }
    log.querySelector(".empty").hidden = true;
    const user = el("article", { class: "msg user", "aria-label": "You" });
    user.appendChild(el("div", { class: "text", "data-role": "user" }, shownText));
    log.querySelectorAll('[data-action="regenerate"], [data-action="edit"]').forEach(function (b) { b.remove(); });
    const view = pendingArticle();
    view.user = user;
    view.sentText = text;
    log.append(user, view.article);
    addCopyButtons(user);
    if (!regenerate) { box.value = ""; grow(); }
    editField.value = "";
    const retry = form.querySelector('[data-action="retry"]');
    if (retry) retry.remove(); // the failed message is on its way again
    scrollToEnd(true);
    let ended = false;
    try {
      ended = await follow(response, view);
    } catch (e) { /* connection dropped mid-reply: the server keeps writing it */ }
    if (!ended) {
      if (view.turn) await resume(view); else window.location.reload();
    }
  }

  form.addEventListener("submit", function (event) {
    const submitter = event.submitter;
    // New chat, Stop and Edit (JS-off routes) keep their own behaviour unless handled here.
    if (submitter && submitter.getAttribute("formaction")) {
      if (submitter.dataset.action === "stop") { event.preventDefault(); return; }
      return;
    }
    event.preventDefault();
    if (busy) {
      showError("A reply is still being written. Wait for it, or press Stop.");
      return;
    }
    send(submitter).catch(function () { window.location.reload(); });
  });

  log.addEventListener("click", function (event) {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    if (button.dataset.action === "edit") {
      event.preventDefault();
      const users = log.querySelectorAll('[data-role="user"]');
      box.value = users[users.length - 1].textContent;
      editField.value = "1";
      document.getElementById("keys").textContent = "Editing your last message: sending replaces it and its reply.";
      grow();
      box.focus();
    }
  });

  // A reply still being written when the page loaded (a reload, another tab): pick it up again.
  const writing = log.querySelector("[data-pending-turn]");
  if (writing) {
    busy = true;
    const view = pendingArticle(writing.dataset.pendingTurn);
    writing.replaceWith(view.article);
    view.text.textContent = writing.querySelector("[data-role]").textContent;
    view.received = view.text.textContent;
    resume(view).catch(function () { window.location.reload(); });
  }
})();
