"use strict";
// Progressive enhancement: without this file the form posts and the page reloads (same server code).
// With it, a turn streams: the form is posted to /c/<id>/turns and the reply arrives as Server-Sent Events
// over the fetch response. New words are shown with textContent at once; every few hundred
// milliseconds the server sends its sanitised rendering of the text so far, which replaces them.
// No inline scripts, no dependencies, no build step.
(function () {
  const form = document.getElementById("composer");
  const box = document.getElementById("message");
  const log = document.querySelector('[data-role="log"]');
  const scroller = document.getElementById("scroller");
  const jump = document.getElementById("jump");
  const errorBox = document.getElementById("error");
  const notice = document.getElementById("notice");
  const hint = document.getElementById("hint");
  const announcer = document.getElementById("announce");
  const editingHint = document.getElementById("editing");
  function inForm(selector) { return form && form.querySelector(selector); }
  const editField = inForm('input[name="edit"]');
  const csrfField = inForm('input[name="csrf_token"]');
  // Send, or Stop while a reply is written: one button that changes in place.
  const actionButton = inForm('[data-action="send"], [data-action="stop"]');
  const cancelButton = inForm('[data-action="cancel"]');
  const enterHint = inForm(".enter-hint");
  // Without any of these (another page, an old browser) the page works as it does without script.
  const needed = [form, box, log, scroller, jump, errorBox, notice, hint, announcer, editingHint,
    log && log.querySelector(".empty"), editField, csrfField, actionButton, cancelButton, enterHint];
  if (needed.some(function (node) { return !node; }) || !window.fetch || !window.ReadableStream) return;
  // Flask-WTF's token, sent as a header as well as in the form body (CSRF protection).
  const csrfHeaders = { "X-CSRFToken": csrfField.value };
  // The conversation this page shows ("new" until its first send), and its URLs.
  function conversationUrl(suffix) {
    return "/c/" + encodeURIComponent(form.dataset.conversation) + suffix;
  }
  // Touch screens have no Shift+Enter: there Enter adds a line and the Send button sends.
  const touch = window.matchMedia("(pointer: coarse)").matches;
  let current = null; // the Pending reply being written, if any (one at a time)

  // --- small helpers -----------------------------------------------------------------------------
  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function show(node, message) {
    node.textContent = message || "";
    node.hidden = !message;
  }
  function showError(message) { show(errorBox, message); }
  function showNotice(message) { show(notice, message); }
  function messageCount() {
    return log.querySelectorAll('[data-role="user"], [data-role="assistant"]').length;
  }
  function lastArticles() {
    return Array.from(log.querySelectorAll("article.msg")).slice(-2);
  }

  // --- scrolling -----------------------------------------------------------------------------------
  // The scroller is flex column-reverse: scrollTop is 0 at the end and negative above it, and the
  // browser keeps the end in view as a reply grows. A reader who scrolled up keeps their place.
  function distanceFromEnd() { return Math.abs(scroller.scrollTop); }
  function atEnd() { return distanceFromEnd() < 40; }
  function toEnd(smooth) { scroller.scrollTo({ top: 0, behavior: smooth ? "smooth" : "auto" }); }
  function keepPlace(change) {
    if (atEnd()) { change(); return; }
    const fromTop = scroller.scrollHeight - scroller.clientHeight + scroller.scrollTop;
    change();
    scroller.scrollTop = fromTop - scroller.scrollHeight + scroller.clientHeight;
  }
  scroller.addEventListener("scroll", function () {
    jump.hidden = distanceFromEnd() < 200;
  }, { passive: true });
  jump.addEventListener("click", function () {
    toEnd(true);
    jump.hidden = true;
  });

  // --- times and copy buttons ------------------------------------------------------------------------
  function localTime(node) {
    const when = new Date(node.getAttribute("datetime"));
    if (!isNaN(when)) node.textContent = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

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
  function toolsOf(article) {
    let tools = article.querySelector(":scope > .tools");
    if (!tools) { tools = el("div", { class: "tools" }); article.appendChild(tools); }
    return tools;
  }
  // A message's text as typed: a formula rendered as MathML gives back its TeX source (kept in the
  // <math>'s annotation in a person's own messages), not its symbols.
  function messageText(node) {
    const copy = node.cloneNode(true);
    copy.querySelectorAll("math").forEach(function (m) {
      const source = m.querySelector('annotation[encoding="application/x-tex"]');
      m.replaceWith(source ? source.textContent : m.textContent);
    });
    return copy.textContent;
  }
  function addCopyButtons(article) {
    const text = article.querySelector("[data-role]");
    if (!text || article.querySelector(":scope > .tools > .copy")) return;
    const who = text.dataset.role === "user" ? "your message" : "the reply";
    toolsOf(article).prepend(copyButton(function () {
      return text.dataset.role === "user" ? messageText(text) : text.innerText;
    }, "Copy " + who));
    text.querySelectorAll("pre").forEach(function (pre, i) {
      const code = pre.querySelector("code") || pre;
      pre.appendChild(copyButton(function () { return code.innerText; }, "Copy code block " + (i + 1)));
    });
  }
  // The log as the server sent it (at load, and fetched again): local times, copy buttons.
  function dress() {
    log.querySelectorAll("time[datetime]").forEach(localTime);
    log.querySelectorAll("article.msg:not(.writing)").forEach(addCopyButtons);
  }
  dress();

  // --- the message box ---------------------------------------------------------------------------
  function grow() {
    box.style.height = "auto";
    box.style.height = Math.min(box.scrollHeight + 2, window.innerHeight * 0.4) + "px";
  }
  // What is typed but not sent is kept per conversation in this browser (New chat, a sidebar link, a
  // reload or a closed tab would otherwise lose it), and cleared once a send is accepted. While an
  // earlier message is being edited, the box holds that message, not the draft: Cancel puts the
  // draft back.
  function draftKey() { return "chat.draft." + form.dataset.conversation; }
  function keepDraft(text) {
    try {
      if (text) localStorage.setItem(draftKey(), text); else localStorage.removeItem(draftKey());
    } catch (e) { /* storage full or off: the box itself still holds the text */ }
  }
  function savedDraft() {
    try { return localStorage.getItem(draftKey()) || ""; } catch (e) { return ""; }
  }
  let beforeEdit = null; // the draft that was in the box when Edit replaced it
  box.addEventListener("input", function () {
    grow();
    if (!editField.value) keepDraft(box.value);
  });
  box.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing && !touch) {
      event.preventDefault();
      form.requestSubmit(current ? null : actionButton); // while writing: "wait, or press Stop"
    } else if (event.key === "Escape" && editField.value) {
      event.preventDefault();
      cancelEdit();
    }
  });
  if (editField.value) beforeEdit = savedDraft();
  else if (!box.value) box.value = savedDraft(); // the server's own text (a failed send) comes first
  grow();
  // "Enter sends" is true only with this script and a keyboard (touch screens: CSS hides it).
  enterHint.hidden = !!editField.value;
  // The skip link lands in the box itself (a fragment alone would only scroll to it).
  const skip = document.querySelector(".skip");
  if (skip) skip.addEventListener("click", function (event) { event.preventDefault(); box.focus(); });
  if (!touch) {
    box.focus({ preventScroll: true });
    box.setSelectionRange(box.value.length, box.value.length);
  }

  // --- edit mode: bound to the reply it replaces (the server refuses it if that changed) ------------
  function setEditing(replyId) {
    editField.value = replyId || "";
    editingHint.hidden = !replyId;
    cancelButton.hidden = !replyId;
    enterHint.hidden = !!replyId;
  }
  function startEdit(replyId, text) {
    if (!editField.value) beforeEdit = box.value;
    setEditing(replyId);
    box.value = text;
    grow();
    box.focus();
  }
  function cancelEdit() {
    setEditing(null);
    box.value = beforeEdit || "";
    beforeEdit = null;
    grow();
    box.focus();
  }

  // --- attachments -------------------------------------------------------------------------------
  // The file input is the form's own (it works without this script); here: a chip per chosen file
  // (name, size, a thumbnail for an image, a Remove button), files dropped on the box or pasted.
  const fileInput = form.querySelector('input[type="file"][name="files"]');
  const chips = document.getElementById("chips");
  const uploadBar = document.getElementById("upload");
  function sizeText(n) {
    if (n < 1024) return n + " bytes";
    if (n < 1048576) return (n / 1024).toFixed(1).replace(/\.0$/, "") + " KB";
    return (n / 1048576).toFixed(1).replace(/\.0$/, "") + " MB";
  }
  function chosenFiles() { return fileInput ? Array.from(fileInput.files) : []; }
  function setFiles(files) {
    const all = new DataTransfer();
    files.forEach(function (f) { all.items.add(f); });
    fileInput.files = all.files;
    showChips();
  }
  function showChips() {
    if (!chips) return;
    chips.querySelectorAll("img").forEach(function (img) { URL.revokeObjectURL(img.src); });
    chips.replaceChildren();
    chosenFiles().forEach(function (file, i) {
      const chip = el("li", { class: "chip" });
      if (/^image\/(png|jpeg|gif|webp)$/.test(file.type)) {
        chip.appendChild(el("img", { src: URL.createObjectURL(file), alt: "" }));
      }
      chip.appendChild(el("span", {}, file.name + " (" + sizeText(file.size) + ")"));
      const remove = el("button", { type: "button", class: "secondary small", "aria-label": "Remove " + file.name }, "Remove");
      remove.addEventListener("click", function () {
        setFiles(chosenFiles().filter(function (_, j) { return j !== i; }));
        box.focus();
      });
      chip.appendChild(remove);
      chips.appendChild(chip);
    });
    chips.hidden = !chips.children.length;
  }
  function addFiles(list) {
    if (!fileInput || !list || !list.length) return;
    setFiles(chosenFiles().concat(Array.from(list)));
  }
  if (fileInput) {
    fileInput.addEventListener("change", showChips);
    box.addEventListener("dragover", function (event) {
      if (event.dataTransfer && Array.from(event.dataTransfer.types).includes("Files")) event.preventDefault();
    });
    box.addEventListener("drop", function (event) {
      if (!event.dataTransfer || !event.dataTransfer.files.length) return;
      event.preventDefault();
      addFiles(event.dataTransfer.files);
    });
    box.addEventListener("paste", function (event) {
      const files = event.clipboardData && event.clipboardData.files;
      if (files && files.length) { event.preventDefault(); addFiles(files); }
    });
  }
  function showProgress(loaded, total) {
    if (!uploadBar) return;
    const percent = total ? Math.floor(loaded * 100 / total) : 0;
    uploadBar.hidden = false;
    uploadBar.querySelector("progress").value = percent;
    uploadBar.querySelector("#upload-percent").textContent = percent + "%";
  }
  // A send with files: XMLHttpRequest, for its upload progress; its streamed answer is handed on as
  // a Response, so the reply is read like any other.
  function upload(url, body, headers, reply) {
    return new Promise(function (resolve, reject) {
      const xhr = new XMLHttpRequest();
      const encoder = new TextEncoder();
      let sent = 0, stream;
      const answer = new ReadableStream({ start: function (c) { stream = c; } });
      function pump() {
        const text = xhr.responseText;
        if (text.length > sent) { stream.enqueue(encoder.encode(text.slice(sent))); sent = text.length; }
      }
      xhr.open("POST", url);
      Object.keys(headers).forEach(function (k) { xhr.setRequestHeader(k, headers[k]); });
      xhr.upload.addEventListener("progress", function (e) { if (e.lengthComputable) showProgress(e.loaded, e.total); });
      xhr.upload.addEventListener("load", function () {
        reply.uploading = false; // sent whole: from now on the turn may begin
        if (uploadBar) uploadBar.hidden = true;
      });
      xhr.addEventListener("readystatechange", function () {
        if (xhr.readyState === 2) {
          resolve(new Response(answer, { status: xhr.status,
            headers: { "Content-Type": xhr.getResponseHeader("Content-Type") || "" } }));
        }
      });
      xhr.addEventListener("progress", pump);
      xhr.addEventListener("load", function () { pump(); stream.close(); });
      function failed() {
        if (uploadBar) uploadBar.hidden = true;
        const error = new DOMException("The send was cut off", "AbortError");
        reject(error);
        try { stream.error(error); } catch (e) { /* already closed */ }
      }
      xhr.addEventListener("error", failed);
      xhr.addEventListener("abort", failed);
      reply.controller.signal.addEventListener("abort", function () { xhr.abort(); });
      showProgress(0, 1);
      xhr.send(body);
    });
  }

  // --- a turn ------------------------------------------------------------------------------------
  // While a reply is written, Send becomes Stop.
  let busyNotice = false;
  function setWriting(reply) {
    current = reply;
    actionButton.textContent = reply ? "Stop" : "Send";
    actionButton.dataset.action = reply ? "stop" : "send";
    ["formaction", "formnovalidate", "name", "value"].forEach(function (a) { actionButton.removeAttribute(a); });
    if (!reply && busyNotice) showNotice(""); // "still being written" is over
    busyNotice = false;
  }

  // The first reply of a new conversation: from now on this page is that conversation's page.
  function adopt(id, url, title) {
    const settings = form.querySelector(".settings");
    if (settings) settings.open = false; // set for this conversation: fold them, as its page does
    form.dataset.conversation = id;
    form.action = url;
    history.replaceState(null, "", url);
    const list = document.querySelector('nav[aria-label="Conversations"] ul');
    if (!list) return;
    list.querySelectorAll("[aria-current]").forEach(function (a) { a.removeAttribute("aria-current"); });
    const none = list.querySelector(".none");
    if (none) none.remove();
    const item = el("li");
    item.appendChild(el("a", { href: url, "aria-current": "page" }, title));
    list.prepend(item);
    // The heading and the conversation's own links, as the server renders them for /c/<id>.
    const heading = document.getElementById("conversation-title");
    if (heading) heading.textContent = title;
    const bar = document.querySelector(".convbar");
    if (bar && !bar.querySelector(".conv-actions")) {
      const path = new URL(url, location.href).pathname;
      const actions = el("div", { class: "conv-actions" });
      actions.append(el("a", { href: path + "/rename" }, "Rename"),
        el("a", { href: path + "/export.md" }, "Export Markdown"),
        el("a", { href: path + "/export.json" }, "Export JSON"),
        el("a", { href: path + "/delete", role: "button", class: "button secondary small danger" }, "Delete"));
      bar.appendChild(actions);
    }
  }

  // The newest words, until the server renders them, as the text a reader will see rather than
  // half-parsed markdown: no fences, heading marks, list dashes, quote marks, emphasis or link
  // syntax. Inside a code fence the text stays as it is.
  const FENCE = /^\s{0,3}(```|~~~)/;
  function plainTail(raw, mark) {
    const before = raw.slice(0, mark).split("\n");
    let inFence = false;
    before.slice(0, -1).forEach(function (line) { if (FENCE.test(line)) inFence = !inFence; });
    const lines = raw.slice(mark).split("\n");
    // The tail may start mid-line: that line's start decides what its beginning is.
    const started = before[before.length - 1];
    return lines.map(function (line, i) {
      const whole = i === 0 ? started + line : line;
      if (FENCE.test(whole)) { inFence = !inFence; return ""; }
      if (inFence) return line;
      let shown = whole
        .replace(/^\s{0,3}#{1,6}(\s+|$)/, "")
        .replace(/^\s{0,3}(>\s?)+/, "")
        .replace(/^(\s*)[-*+](\s+)/, "$1\u2022$2")
        .replace(/^\s{0,3}([-*_])(\s*\1){2,}\s*$/, "")
        .replace(/^\s*\|?(\s*:?-+:?\s*\|)+\s*:?-*:?\s*$/, "")
        .replace(/\[([^\]]*)\]\([^)]*\)?/g, "$1")
        .replace(/(\*\*|__|~~|`)/g, "")
        .replace(/\s*\|\s*/g, function (bar, offset) { return offset === 0 ? "" : "  "; });
      if (/^[\s#>*_`|~-]+$/.test(shown)) shown = ""; // only markup so far (a line being started)
      // The first line continues text already on screen: show only its new part.
      return i === 0 ? shown.slice(Math.max(0, shown.length - line.length)) : shown;
    }).join("\n");
  }

  // Read SSE events from a fetch response body, calling handle(kind, data, id) for each.
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
        let kind = "message", data = "", id = null;
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) kind = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
          else if (line.startsWith("id: ")) id = line.slice(4);
        }
        if (data) handle(kind, JSON.parse(data), id);
      }
    }
  }

  // Stop a turn ({turn}) or give up a send's waiting place ({waiter}). Fire and forget: the stream's
  // end (or a reload) shows the outcome.
  function askStop(fields) {
    fields.csrf_token = csrfHeaders["X-CSRFToken"];
    fetch(conversationUrl("/stop"), { method: "POST", body: new URLSearchParams(fields),
      headers: Object.assign({ Accept: "application/json" }, csrfHeaders) }).catch(function () {});
  }

  // One reply being written (by a send, or picked up again), `current` until it ends: its article and
  // its stream's state. `turn` is named by `started`, `waiter` by `queued`; `user` is the message it
  // answers, `removed` what an edit or regenerate replaces, `sentText` what goes back if unsent.
  class Pending {
    constructor(turn, sentText) {
      this.article = el("article", { class: "msg assistant writing", "aria-label": "Assistant", "aria-busy": "true" });
      this.text = el("div", { class: "text md", "data-role": "assistant" });
      this.thinking = el("p", { class: "thinking" }, "Thinking… 0 s");
      this.article.append(this.text, this.thinking);
      const started = Date.now();
      this.timer = setInterval(() => {
        this.thinking.textContent = "Thinking… " + Math.round((Date.now() - started) / 1000) + " s";
      }, 1000);
      this.turn = turn;
      this.sentText = sentText;
      this.controller = new AbortController(); // cuts the send off while it waits or uploads
      this.restart();
      setWriting(this);
    }
    // Written, stopped, failed or given up: no longer the reply being written.
    end() {
      clearInterval(this.timer);
      setWriting(null);
    }

    // The reply so far: the server's last rendering, then the words that came after it as plain text.
    // `raw` is every word received; `mark` is how much of it the last rendering covered.
    restart() {
      this.tail = null;
      this.raw = "";
      this.mark = 0;
      this.text.textContent = "";
    }
    rendered(html) {
      keepPlace(() => {
        this.text.innerHTML = html; // sanitised on the server (markdown-it-py + nh3)
        this.text.classList.add("rendered");
        this.mark = this.raw.length;
        this.tail = this.text.appendChild(el("span", { class: "tail" }));
      });
    }
    delta(text) {
      keepPlace(() => {
        this.thinking.hidden = true;
        this.raw += text;
        if (!this.tail) this.tail = this.text.appendChild(el("span", { class: "tail" }));
        this.tail.textContent = plainTail(this.raw, this.mark); // text, never HTML
      });
    }
    // A reasoning summary: collapsed above the answer, text only, never sent back upstream.
    reasoning(text) {
      if (!this.reasoningText) {
        this.reasoningText = el("div", { class: "reasoning-text" });
        const details = el("details", { class: "reasoning" });
        details.append(el("summary", {}, "Reasoning"), this.reasoningText);
        this.article.prepend(details);
      }
      this.reasoningText.textContent += text;
    }

    // Apply one event of the stream. True once the reply has ended.
    handle(kind, data, id) {
      if (id) this.lastId = id;
      if (kind === "resumed" && !data.after) {
        this.restart(); // the server starts this reply over: show it from its first word again
      } else if (kind === "started") {
        this.turn = data.turn || this.turn;
        if (data.session) { form.dataset.session = data.session; rememberSession(data.session); }
        if (data.conversation && form.dataset.conversation === "new") adopt(data.conversation, data.url, data.title);
        // Stop pressed before the turn had its name; after adopt, so a first send's stop goes to its
        // new conversation rather than to "new".
        if (this.stopWanted) this.stop();
      } else if (kind === "queued") {
        this.thinking.textContent = data.message;
        this.waiter = data.waiter;
        if (this.stopWanted) this.stop(); // queued after all: nothing was sent, so it is given up
      } else if (kind === "delta") {
        this.delta(data);
      } else if (kind === "reasoning") {
        this.reasoning(data);
      } else if (kind === "html") {
        this.rendered(data);
      } else if (kind === "done" || kind === "error") {
        this.finish(kind, data);
        return true;
      }
      return false;
    }
    // Apply one response's events. Resolves to true once the reply has ended.
    async follow(response) {
      let ended = false;
      await readEvents(response, (kind, data, id) => { if (this.handle(kind, data, id)) ended = true; });
      return ended;
    }
    // After a reload or a dropped connection: follow the reply from the server again.
    async resume() {
      for (let attempt = 0; attempt < 30; attempt++) {
        try {
          const headers = { Accept: "text/event-stream" };
          if (this.lastId) headers["Last-Event-ID"] = this.lastId; // only what this page missed
          const response = await fetch(conversationUrl("/turns/" + encodeURIComponent(this.turn)), { headers });
          if (!response.ok) break;
          if (await this.follow(response)) return;
        } catch (e) { /* network trouble: wait and try again */ }
        await new Promise(function (r) { setTimeout(r, 2000); });
      }
      window.location.reload();
    }

    // Stop, whatever the phase: a named turn is stopped by the server; a send still queued or
    // uploading is given up; one whose turn is starting (the server begins it before answering) is
    // stopped as soon as the stream names it, rather than reported unsent while it is answered.
    stop() {
      if (this.turn) askStop({ turn: this.turn });
      else if (this.waiter || this.uploading) this.abandon();
      else this.stopWanted = true;
    }
    // Nothing was sent: give up the wait and the place (the server may hold the wait on another
    // worker), and put the message back.
    abandon() {
      this.abandoned = true;
      if (this.waiter) askStop({ waiter: this.waiter });
      this.controller.abort();
      this.end();
      this.putBack(this.sentText);
      showNotice("Not sent: your message is back in the box.");
    }
    // Nothing was stored for this turn: the message goes back in the box, not away with a reload,
    // and the turn an edit or regenerate would have replaced comes back.
    putBack(text) {
      if (this.user) this.user.remove();
      this.article.remove();
      (this.removed || []).forEach(function (article) { log.appendChild(article); });
      log.querySelector(".empty").hidden = messageCount() > 0;
      box.value = text;
      keepDraft(text); // unsent: a draft again
      grow();
      box.focus();
    }

    finish(kind, data) {
      this.end();
      // (A reply picked up after a reload has no text of its own to give back: it reloads.)
      if (kind === "error" && data.unsent && this.user && this.sentText !== undefined) {
        this.putBack(this.sentText);
        showError(data.message);
        return;
      }
      if (kind === "done" && data.stopped && !data.kept && this.user && !this.removed) {
        this.putBack(messageText(this.user.querySelector("[data-role]")));
        showNotice(data.note + " Your message is back in the box.");
        return;
      }
      // Anything else but a plain finished reply (an error, a turn from another tab, an edit or
      // regenerate that did not happen) is shown as stored.
      if (kind === "error" || data.count !== messageCount() || (data.stopped && !data.kept) || !data.articles) {
        window.location.reload();
        return;
      }
      // The finished turn exactly as the page renders it (the server's own _message.html: its
      // sanitised reply, note, model, time, usage and the last turn's tools), in place of the two
      // articles built while it streamed.
      const fresh = document.createElement("template");
      fresh.innerHTML = data.articles;
      const articles = fresh.content.querySelectorAll("article");
      keepPlace(() => {
        this.user.replaceWith(fresh.content);
        this.article.remove();
        articles.forEach(function (one) {
          one.querySelectorAll("time[datetime]").forEach(localTime);
          addCopyButtons(one);
        });
      });
      const total = document.querySelector('[data-role="total"]');
      if (total && data.total) total.textContent = total.title = "Total: " + data.total;
      if (data.budget) showBudget(data.budget.used, data.budget.limit, data.budget.text);
      if (data.title && document.title === "Chat") document.title = data.title + " · Chat"; // a new one
      announcer.textContent = "Reply finished: " + articles[articles.length - 1].innerText.slice(0, 500);
    }
  }

  // The articles from the message an edit or a regenerate of reply `replyId` replaces, to the end:
  // that branch goes (kept on the server as a version) and the new one streams in its place.
  function articlesFrom(replyId) {
    const articles = Array.from(log.querySelectorAll("article.msg"));
    const tool = Array.from(log.querySelectorAll('[data-action="regenerate"], [data-action="edit"]'))
      .find(function (b) { return (b.value || b.dataset.reply) === replyId; });
    const article = tool && tool.closest("article");
    let start = article ? articles.indexOf(article) : -1;
    if (article && article.classList.contains("assistant")) start -= 1;
    return start >= 0 ? articles.slice(start) : lastArticles();
  }

  async function send(submitter) {
    const data = new FormData(form, submitter);
    const regenerate = !!data.get("regenerate");
    const replaced = regenerate || !!data.get("edit");
    const text = String(data.get("message") || "");
    const files = data.getAll("files").filter(function (f) { return f && f.name; });
    if (!files.length) data.delete("files"); // an empty file part: a text-only send
    const withFiles = files.length > 0 || data.getAll("keep").length > 0;
    if (!regenerate && !text.trim() && !withFiles) {
      hint.textContent = "Type a message first: an empty message is not sent.";
      hint.hidden = false;
      box.setAttribute("aria-invalid", "true");
      box.focus();
      return;
    }
    const reply = new Pending(null, text);
    hint.hidden = true;
    box.removeAttribute("aria-invalid");
    showError("");
    showNotice("");
    let response;
    try {
      const headers = Object.assign({ Accept: "text/event-stream" }, csrfHeaders);
      reply.uploading = files.length > 0;
      response = files.length ? await upload(conversationUrl("/turns"), data, headers, reply)
        : await fetch(conversationUrl("/turns"), { method: "POST", body: new URLSearchParams(data),
          signal: reply.controller.signal, headers });
    } catch (e) {
      if (reply.abandoned) return;
      reply.end();
      showError("Could not reach the chat server. Your message is kept in the box; try again.");
      return;
    }
    if (!response.ok) {
      reply.end();
      let message = "The message could not be sent (" + response.status + ").";
      let body = {};
      try { body = await response.json(); message = body.error || message; } catch (e) { /* not JSON */ }
      if (body.context && body.url) { window.location.assign(body.url); return; } // the text is kept there
      showError(message);
      return;
    }
    // Accepted: show the turn at once. Regenerate and Edit replace the last turn.
    let shownText = text;
    if (replaced) {
      reply.removed = articlesFrom(String(data.get("regenerate") || data.get("edit")));
      if (regenerate) shownText = messageText(reply.removed[0].querySelector('[data-role="user"]'));
      reply.removed.forEach(function (article) { article.remove(); });
    }
    log.querySelector(".empty").hidden = true;
    const user = el("article", { class: "msg user", "aria-label": "You" });
    user.appendChild(el("div", { class: "text", "data-role": "user" }, shownText));
    if (files.length) {  // their names until the server's own rendering (thumbnails) replaces it
      const list = el("ul", { class: "attachments", "data-role": "attachments" });
      files.forEach(function (f) { list.appendChild(el("li", {}, f.name)); });
      user.appendChild(list);
    }
    if (fileInput && !regenerate) { fileInput.value = ""; showChips(); } // sent: not attached again
    const kept = form.querySelector("fieldset.kept");
    if (kept && !regenerate) kept.remove();
    reply.user = user;
    log.append(user, reply.article);
    addCopyButtons(user);
    if (!regenerate) {
      // Sent: the draft is done with. After an edit, the draft from before it comes back.
      box.value = replaced && beforeEdit ? beforeEdit : "";
      keepDraft(box.value);
      grow();
    }
    beforeEdit = null;
    setEditing(null);
    const retry = form.querySelector('[data-action="retry"]');
    if (retry) retry.remove(); // the failed message is on its way again
    toEnd(false);
    let ended = false;
    try {
      ended = await reply.follow(response);
    } catch (e) { /* connection dropped mid-reply: the server keeps writing it */ }
    if (reply.abandoned || ended) return;
    if (reply.turn) await reply.resume(); else window.location.reload();
  }

  form.addEventListener("submit", function (event) {
    const action = event.submitter && event.submitter.dataset.action;
    if (action === "stop") { event.preventDefault(); if (current) current.stop(); return; }
    if (action === "cancel") { event.preventDefault(); cancelEdit(); return; }
    // New chat and the JS-off Edit route keep their own behaviour.
    if (event.submitter && event.submitter.getAttribute("formaction")) return;
    event.preventDefault();
    if (current) {
      showNotice("A reply is still being written. Wait for it, or press Stop.");
      busyNotice = true;
      return;
    }
    send(event.submitter).catch(function () { window.location.reload(); });
  });

  log.addEventListener("click", function (event) {
    const button = event.target.closest('button[data-action="edit"]');
    if (!button) return;
    event.preventDefault();
    // The message this Edit belongs to, whichever it is: sending makes a new version of it.
    startEdit(button.dataset.reply, messageText(button.closest("article").querySelector('[data-role="user"]')));
  });

  // --- settings: only the options the chosen model supports are offered --------------------------
  const modelSelect = form.querySelector('select[name="model"]');
  // What each model supports and its context length come from /models.json, fetched the first time
  // the picker is used: with hundreds of models they would weigh on every page.
  let modelInfo = null;
  function loadModels() {
    if (!modelInfo) {
      modelInfo = fetch(modelSelect.dataset.models, { credentials: "same-origin" })
        .then(function (response) {
          if (!response.ok) throw new Error("models: " + response.status);
          return response.json();
        })
        .then(function (body) { return body.models || {}; })
        .catch(function () { modelInfo = null; return {}; });  // asked again at the next change
    }
    return modelInfo;
  }
  function offerParams(params) {
    form.querySelectorAll("[data-param]").forEach(function (p) {
      const on = params.indexOf(p.dataset.param) >= 0;
      if (p.dataset.param === "tools") {
        // Search the web stays in sight, disabled with its note, for a model that cannot search.
        const note = p.querySelector(".search-note");
        if (note) note.hidden = on;
        if (!on) p.querySelector("input").checked = false;
      } else {
        p.hidden = !on;
      }
      p.querySelectorAll("input, select").forEach(function (f) { f.disabled = !on; });
    });
  }
  if (modelSelect) {
    modelSelect.addEventListener("focus", loadModels);
    modelSelect.addEventListener("change", function () {
      loadModels().then(function (models) {
        const info = models[modelSelect.value];
        if (!info) return;  // not known here: the fields stay as the server showed them
        offerParams(info.params.split(" "));
        // The same history against the new model's context (the server's estimate of what it uses).
        const meter = document.getElementById("budget");
        if (meter) showBudget(Number(meter.value), info.context || null, null);
      });
    });
  }

  // --- how full the model's context is -------------------------------------------------------------
  function showBudget(used, limit, text) {
    const meter = document.getElementById("budget");
    const label = document.getElementById("budget-text");
    if (!meter || !label) return;
    meter.parentNode.hidden = !limit;
    if (!limit) return;
    meter.max = limit;
    meter.low = Math.floor(limit * 0.7);
    meter.high = Math.floor(limit * 0.9);
    meter.value = used;
    if (!text) {
      const percent = Math.round(Math.min(1, used / limit) * 100);
      const shown = used && percent === 0 ? "<1" : percent === 100 && used < limit ? ">99" : String(percent);
      text = "About " + used.toLocaleString("en-US") + " of " + limit.toLocaleString("en-US") +
        " tokens (" + shown + "%)";
    }
    label.textContent = "Context: " + text;
  }

  // --- the conversation list: always shown on wide screens (CSS does it too where browsers can) ---
  const sidebar = document.getElementById("sidebar");
  if (sidebar && window.matchMedia("(min-width: 48rem)").matches) sidebar.open = true;

  // --- keyboard shortcuts (listed in the "Shortcuts" popover) ------------------------------------
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey && event.shiftKey && (event.key === "O" || event.key === "o")) {
      event.preventDefault();
      const newChat = document.querySelector('[data-action="new"]');
      if (newChat) newChat.click();
    } else if (event.shiftKey && event.key === "Escape") {
      event.preventDefault();
      box.focus();
    }
  });

  // A reply still being written when the page loaded (a reload, another tab): pick it up again.
  function pickUp() {
    const writing = log.querySelector("[data-pending-turn]");
    if (!writing) return;
    const reply = new Pending(writing.dataset.pendingTurn);
    reply.user = writing.previousElementSibling;
    writing.replaceWith(reply.article);
    reply.text.textContent = writing.querySelector("[data-role]").textContent;
    reply.resume().catch(function () { window.location.reload(); });
  }
  pickUp();

  // --- another tab wrote here meanwhile: show it when this tab is looked at again -----------------
  function shape(root) {
    return Array.from(root.querySelectorAll("article.msg")).map(function (article) {
      const text = article.querySelector("[data-role]");
      return (article.dataset.pendingTurn || "") + ":" + (text ? text.textContent.length : 0);
    }).join("|");
  }
  async function refresh() {
    if (current || editField.value || form.dataset.conversation === "new") return;
    let fresh;
    try {
      const response = await fetch(conversationUrl(""), { headers: { Accept: "text/html" } });
      if (!response.ok) return;
      fresh = new DOMParser().parseFromString(await response.text(), "text/html");
    } catch (e) { return; }
    const freshLog = fresh.querySelector('[data-role="log"]');
    if (!freshLog || current || editField.value || shape(freshLog) === shape(log)) return;
    keepPlace(function () { log.innerHTML = freshLog.innerHTML; }); // the server's own rendering
    ['[data-role="total"]', "#budget-text", "#conversation-title", 'nav[aria-label="Conversations"] ul']
      .forEach(function (selector) {
        const mine = document.querySelector(selector), theirs = fresh.querySelector(selector);
        if (mine && theirs) mine.innerHTML = theirs.innerHTML;
      });
    dress();
    pickUp();
  }
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible") refresh();
  });

  // --- a session swapped in by another page on this host (cookies ignore ports) ------------------
  // localStorage is per origin, port included, so what it remembers of this browser's session
  // cannot be written by a page on another port: a different session arriving unasked is shown.
  const SESSION = "chat.session";
  function rememberSession(fingerprint) {
    try { if (fingerprint) localStorage.setItem(SESSION, fingerprint); } catch (e) { /* storage off */ }
  }
  function checkSession() {
    let known = null;
    try { known = localStorage.getItem(SESSION); } catch (e) { return; }
    const seen = form.dataset.session;
    if (!seen) return; // a fresh session, not yet holding anything
    if (!known) { rememberSession(seen); return; }
    if (known === seen) return;
    const warning = document.getElementById("session-warning");
    if (!warning) return;
    warning.setAttribute("role", "alert"); // announced as it appears
    warning.hidden = false;
    actionButton.disabled = true; // nothing goes into a session the person has not accepted
    warning.querySelector('[data-action="keep-session"]').addEventListener("click", function () {
      rememberSession(seen);
      warning.hidden = true;
      actionButton.disabled = false;
    });
    warning.querySelector("form").addEventListener("submit", function () {
      try { localStorage.removeItem(SESSION); } catch (e) { /* storage off */ }
    });
  }
  checkSession();
  // A shared conversation's link: copied with one press (without the script, the field is selectable).
  const copyLink = document.querySelector('[data-action="copy-link"]');
  if (copyLink && navigator.clipboard) {
    copyLink.hidden = false;
    copyLink.addEventListener("click", async function () {
      try {
        await navigator.clipboard.writeText(document.getElementById("share-link").value);
        copyLink.textContent = "Copied";
      } catch (e) { document.getElementById("share-link").select(); }
      setTimeout(function () { copyLink.textContent = "Copy link"; }, 1500);
    });
  }
})();
