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
  let retryDelay = 500;
  let activeId = null; // the assistant message currently being written

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
      retryDelay = 500;
      connStatus.textContent = "";
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
      setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 8000);
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
        const hint = document.getElementById("empty-hint");
        if (hint) hint.remove();
        prompt.value = "";
        const title = document.querySelector(".conv.active .conv-title");
        if (title && frame.title) title.textContent = frame.title;
        messages.appendChild(fromHtml(frame.user_html));
        messages.appendChild(fromHtml(frame.reply_html));
        lastSeq.set(frame.message_id, 0);
        setActive(frame.message_id);
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
    send({ type: "submit", text: text });
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
