// Chat page: one WebSocket per conversation. Tokens arrive as numbered chunks; after a
// reconnect we send the last number we saw per message and the server replays only the rest.
(function () {
  "use strict";

  const messages = document.getElementById("messages");
  if (!messages) return;
  const form = document.getElementById("composer");
  const prompt = document.getElementById("prompt");
  const sendButton = document.getElementById("send");
  const stopButton = document.getElementById("stop");
  const errorBox = document.getElementById("chat-error");
  const connStatus = document.getElementById("conn-status");

  const lastSeq = new Map(); // message id -> last chunk number received
  let socket = null;
  // Reconnects back off exponentially with full jitter (a random wait up to the cap of this
  // attempt): a server restart must not see every open tab come back in the same instant.
  const RETRY_BASE_MS = 500;
  const RETRY_CAP_MS = 30000;
  let retryAttempt = 0;
  let activeId = null; // the assistant message currently being written
  // The submit sent but not yet confirmed: re-sent with the same client id after a reconnect,
  // so a confirmation lost with the socket is recovered, and the server never stores it twice.
  let pendingSubmit = null;

  function newClientId() {
    if (window.crypto && window.crypto.randomUUID) return window.crypto.randomUUID();
    return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2);
  }

  function retryDelay() {
    const cap = Math.min(RETRY_CAP_MS, RETRY_BASE_MS * Math.pow(2, retryAttempt));
    retryAttempt = Math.min(retryAttempt + 1, 16);
    return Math.random() * cap;
  }

  function wsUrl() {
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    return scheme + window.location.host + messages.dataset.wsPath;
  }

  function showError(text) {
    errorBox.textContent = text;
    errorBox.hidden = !text;
  }

  function fromHtml(html) {
    const template = document.createElement("template");
    template.innerHTML = html.trim(); // server-rendered, sanitized markup
    return template.content.firstElementChild;
  }

  function setActive(id) {
    activeId = id;
    stopButton.hidden = id === null;
    sendButton.disabled = id !== null;
  }

  function openMessages() {
    return messages.querySelectorAll('.msg-assistant[data-status="pending"], .msg-assistant[data-status="streaming"]');
  }

  function connect() {
    socket = new WebSocket(wsUrl());
    socket.addEventListener("open", function () {
      retryAttempt = 0;
      connStatus.textContent = "";
      if (pendingSubmit) send(pendingSubmit);
      // Resume every unfinished answer from the last chunk we saw (0 after a page load).
      openMessages().forEach(function (el) {
        const id = Number(el.dataset.messageId);
        setActive(id);
        send({ type: "resume", message_id: id, last_seq: lastSeq.get(id) || 0 });
      });
    });
    socket.addEventListener("message", function (event) {
      handle(JSON.parse(event.data));
    });
    socket.addEventListener("close", function (event) {
      if (event.code === 4429) {
        // Too many chat tabs open: retrying would only be refused again.
        showError(event.reason || "Too many chat tabs are open; close one and reload this page.");
        connStatus.textContent = "Not connected";
        return;
      }
      if (event.code === 4404 || event.code === 4401) {
        showError(event.code === 4404 ? "This conversation no longer exists." : "Please log in again.");
        return;
      }
      connStatus.textContent = "Connection lost, reconnecting…";
      setTimeout(connect, retryDelay());
    });
  }

  function send(frame) {
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify(frame));
      return true;
    }
    showError("Not connected yet; please try again in a moment.");
    return false;
  }

  function bodyOf(id) {
    const el = document.getElementById("msg-" + id);
    return el ? el.querySelector(".msg-body") : null;
  }

  function handle(frame) {
    switch (frame.type) {
      case "submitted": {
        if (pendingSubmit && frame.client_id === pendingSubmit.client_id) {
          pendingSubmit = null;
          prompt.value = "";
        }
        if (document.getElementById("msg-" + frame.message_id)) break; // already shown
        const hint = document.getElementById("empty-hint");
        if (hint) hint.remove();
        const title = document.querySelector(".conv.active .conv-title");
        if (title && frame.title) title.textContent = frame.title;
        messages.appendChild(fromHtml(frame.user_html));
        const reply = fromHtml(frame.reply_html);
        messages.appendChild(reply);
        lastSeq.set(frame.message_id, 0);
        const open = reply.dataset.status === "pending" || reply.dataset.status === "streaming";
        if (open) setActive(frame.message_id);
        messages.scrollTop = messages.scrollHeight;
        break;
      }
      case "chunk": {
        if (frame.seq <= (lastSeq.get(frame.message_id) || 0)) break; // already shown
        lastSeq.set(frame.message_id, frame.seq);
        const body = bodyOf(frame.message_id);
        if (!body) break;
        const el = body.parentElement;
        if (el.dataset.status !== "streaming") {
          el.dataset.status = "streaming";
          el.className = el.className.replace(/status-\w+/, "status-streaming");
          el.querySelector(".msg-status").textContent = "Writing…";
        }
        // Text, never HTML, while streaming; the sanitized rendering replaces it at the end.
        body.appendChild(document.createTextNode(frame.text));
        messages.scrollTop = messages.scrollHeight;
        break;
      }
      case "queued": {
        // Fair sharing (chat/dispatch.py): the turn waits while others' turns run first.
        const el = document.getElementById("msg-" + frame.message_id);
        if (!el || el.dataset.status !== "pending") break;
        el.querySelector(".msg-status").textContent = frame.ahead > 0
          ? "Waiting — " + frame.ahead + " ahead of you"
          : "Waiting — you are next";
        break;
      }
      case "reset": {
        lastSeq.set(frame.message_id, frame.seq);
        const body = bodyOf(frame.message_id);
        if (body) body.textContent = "";
        break;
      }
      case "end": {
        lastSeq.set(frame.message_id, frame.seq);
        const old = document.getElementById("msg-" + frame.message_id);
        if (old) old.replaceWith(fromHtml(frame.html));
        if (activeId === frame.message_id) setActive(null);
        break;
      }
      case "error":
        // A refused submit is not re-sent; its text stays in the box.
        if (pendingSubmit && frame.client_id === pendingSubmit.client_id) pendingSubmit = null;
        showError(frame.error);
        break;
    }
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    const text = prompt.value;
    if (!text.trim()) {
      showError("Type a message first: an empty message is not sent.");
      return;
    }
    showError("");
    // The text stays in the box until the server confirms it stored the message.
    pendingSubmit = { type: "submit", text: text, client_id: newClientId() };
    send(pendingSubmit);
  });

  prompt.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  stopButton.addEventListener("click", function () {
    if (activeId !== null) send({ type: "stop", message_id: activeId });
  });

  connect();
})();
