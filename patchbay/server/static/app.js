// patchbay web chat: conversations kept in this browser, answers streamed from the server's own
// OpenAI API (POST v1/chat/completions with stream: true).
//
// Everything the model says is rendered by markdown.js into text nodes; nothing from an answer is
// ever parsed as HTML. The API key, when the server needs one, lives in sessionStorage only.

import { renderMarkdown } from "./markdown.js";

const API = new URL("v1/", document.baseURI);
const STORE_KEY = "patchbay.conversations";
const MODEL_KEY = "patchbay.model";
const API_KEY = "patchbay.apiKey";
const TITLE_LENGTH = 48;

const $ = (id) => document.getElementById(id);
const ui = {
  sidebar: $("sidebar"), list: $("conversations"), newChat: $("new-chat"), toggle: $("toggle-sidebar"),
  model: $("model"), messages: $("messages"), notice: $("notice"), composer: $("composer"),
  prompt: $("prompt"), send: $("send"), stop: $("stop"),
  keyDialog: $("key-dialog"), keyForm: $("key-form"), keyInput: $("key-input"), keyError: $("key-error"),
};

/** An error answer from the server, with what the page needs to explain it. */
class ApiError extends Error {
  constructor(message, { status = null, attempts = [], retryAfter = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.attempts = Array.isArray(attempts) ? attempts : [];
    this.retryAfter = retryAfter;
  }
}

// ---------------------------------------------------------------- conversations (localStorage)

let state = loadState();
let active = null; // the request being answered: {controller, reply, view}

function loadState() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORE_KEY) || "null");
    if (saved && Array.isArray(saved.conversations)) {
      saved.conversations = saved.conversations.filter(
        (c) => c && typeof c.id === "string" && Array.isArray(c.messages));
      for (const conversation of saved.conversations) {
        for (const message of conversation.messages) message.pending = false; // a reload ended it
      }
      return saved;
    }
  } catch {
    // A damaged store starts afresh rather than breaking the page.
  }
  return { conversations: [], currentId: null };
}

function saveState() {
  try {
    localStorage.setItem(STORE_KEY, JSON.stringify(state));
  } catch (error) {
    showNotice(`This browser did not save the conversation: ${error.message}`);
  }
}

function current() {
  return state.conversations.find((c) => c.id === state.currentId) || null;
}

function newConversation() {
  const conversation = { id: newId(), title: "", model: ui.model.value, messages: [],
                         updated: Date.now() };
  state.conversations.unshift(conversation);
  state.currentId = conversation.id;
  saveState();
  return conversation;
}

function newId() {
  // crypto.randomUUID exists only in secure contexts (https, localhost); a LAN address over http is not.
  return crypto.randomUUID?.() ?? `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

function select(id) {
  if (active) return; // finish or stop the answer first
  state.currentId = id;
  const conversation = current();
  if (conversation?.model && [...ui.model.options].some((o) => o.value === conversation.model)) {
    ui.model.value = conversation.model;
  }
  saveState();
  render();
  ui.sidebar.classList.remove("open");
  ui.prompt.focus();
}

function remove(id) {
  if (active) return;
  state.conversations = state.conversations.filter((c) => c.id !== id);
  if (state.currentId === id) state.currentId = state.conversations[0]?.id ?? null;
  saveState();
  render();
}

function rename(id, title) {
  const conversation = state.conversations.find((c) => c.id === id);
  if (conversation && title.trim()) {
    conversation.title = title.trim().slice(0, 200);
    saveState();
  }
  renderSidebar();
}

// ---------------------------------------------------------------- rendering

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function render() {
  renderSidebar();
  renderMessages();
}

function renderSidebar() {
  const items = [...state.conversations].sort((a, b) => b.updated - a.updated).map((conversation) => {
    const item = el("li", "conversation");
    item.dataset.id = conversation.id;
    if (conversation.id === state.currentId) item.classList.add("active");
    const open = el("button", "open", conversation.title || "New chat");
    open.type = "button";
    open.title = conversation.title || "New chat";
    open.addEventListener("click", () => select(conversation.id));
    const renameButton = iconButton("rename", "\u270E", "Rename");
    renameButton.addEventListener("click", () => startRename(item, conversation));
    const deleteButton = iconButton("delete", "\u2715", "Delete");
    deleteButton.addEventListener("click", () => remove(conversation.id));
    item.append(open, renameButton, deleteButton);
    return item;
  });
  ui.list.replaceChildren(...items);
}

function iconButton(className, icon, label) {
  const button = el("button", className, icon);
  button.type = "button";
  button.title = label;
  button.setAttribute("aria-label", label);
  return button;
}

function startRename(item, conversation) {
  const input = el("input");
  input.value = conversation.title || "";
  input.setAttribute("aria-label", "Conversation name");
  let done = false;
  const finish = (save) => {
    if (done) return;
    done = true;
    if (save) rename(conversation.id, input.value);
    else renderSidebar();
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") finish(true);
    else if (event.key === "Escape") finish(false);
  });
  input.addEventListener("blur", () => finish(true));
  item.replaceChildren(input);
  input.focus();
  input.select();
}

function renderMessages() {
  const conversation = current();
  if (!conversation || conversation.messages.length === 0) {
    ui.messages.replaceChildren(el("p", "intro",
      "Ask anything. The answer streams in from the model you pick above; patchbay falls back to "
      + "another provider when one fails."));
    return;
  }
  ui.messages.replaceChildren(...conversation.messages.map((message) => messageView(message).root));
  scrollToEnd();
}

function messageView(message) {
  const root = el("article", `message ${message.role}`);
  const body = el("div", "body");
  const meta = el("div", "meta");
  const failure = el("div", "failure");
  root.append(body, failure, meta);
  const view = { root, body, meta, failure };
  fillMessage(view, message);
  return view;
}

function fillMessage(view, message) {
  view.root.classList.toggle("pending", Boolean(message.pending));
  if (message.role === "user") {
    view.body.textContent = message.content;
  } else {
    view.body.replaceChildren(renderMarkdown(message.content));
  }
  view.meta.textContent = metaText(message);
  view.failure.hidden = !message.error;
  view.failure.replaceChildren(...(message.error ? failureView(message.error) : []));
}

function metaText(message) {
  if (message.role === "user") return "";
  const parts = [];
  if (message.provider) parts.push(`answered by ${message.provider}`);
  if (message.answeredModel || message.model) parts.push(message.answeredModel || message.model);
  if (typeof message.ttft === "number") parts.push(`first token after ${formatDuration(message.ttft)}`);
  if (message.stopped) parts.push("stopped");
  if (message.pending && !message.content) parts.push("waiting for the first token");
  return parts.join(" · ");
}

function formatDuration(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

function failureView(error) {
  const nodes = [el("p", "failure-title", error.title)];
  if (error.detail) nodes.push(el("p", "failure-detail", error.detail));
  if (error.attempts?.length) {
    const list = el("ul", "attempts");
    for (const a of error.attempts) {
      list.append(el("li", null, `${a.provider} (${a.model}): ${a.message}`));
    }
    nodes.push(list);
  }
  return nodes;
}

let renderQueued = false;

function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    if (active) {
      fillMessage(active.view, active.reply);
      scrollToEnd();
    }
  });
}

function scrollToEnd() {
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

function showNotice(text) {
  ui.notice.textContent = text;
  ui.notice.hidden = !text;
}

// ---------------------------------------------------------------- the server's API

function headers() {
  const result = { "content-type": "application/json" };
  const key = sessionStorage.getItem(API_KEY);
  if (key) result.authorization = `Bearer ${key}`;
  return result;
}

async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON (a proxy's page, say): the status says enough.
  }
  const error = body?.error ?? {};
  return new ApiError(error.message || `the server answered ${response.status} ${response.statusText}`.trim(), {
    status: response.status, attempts: error.attempts, retryAfter: response.headers.get("retry-after"),
  });
}

async function loadModels() {
  let response;
  try {
    response = await fetch(new URL("models", API), { headers: headers() });
  } catch {
    showNotice("Cannot reach the patchbay server. Is it still running?");
    return;
  }
  if (response.status === 401) {
    askForKey(sessionStorage.getItem(API_KEY) ? "The server did not accept that key." : "");
    return;
  }
  if (!response.ok) {
    showNotice(`The model list could not be loaded: ${(await errorFrom(response)).message}`);
    return;
  }
  const models = (await response.json()).data.map((m) => m.id);
  const wanted = current()?.model || localStorage.getItem(MODEL_KEY);
  ui.model.replaceChildren(...models.map((id) => {
    const option = el("option", null, id);
    option.value = id;
    return option;
  }));
  if (models.includes(wanted)) ui.model.value = wanted;
  showNotice(models.length ? "" : "The server has no models configured.");
  ui.send.disabled = models.length === 0;
}

function askForKey(message) {
  ui.keyError.textContent = message;
  ui.keyError.hidden = !message;
  if (!ui.keyDialog.open) ui.keyDialog.showModal();
  ui.keyInput.focus();
}

/** Server-sent events of a fetch response: each event's data, as text. */
async function* sseData(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      const lines = buffer.split(/\r\n|\n|\r(?!$)/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === "") {
          if (data.length) yield data.join("\n");
          data = [];
        } else if (line.startsWith("data:")) {
          data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
        } // comments (": keep-alive") and other fields are ignored
      }
    }
  } finally {
    reader.releaseLock();
  }
}

function history(conversation, reply) {
  return conversation.messages
    .filter((m) => m !== reply && m.content)
    .map((m) => ({ role: m.role, content: m.content }));
}

async function send(text) {
  if (active || !text.trim() || !ui.model.value) return;
  const conversation = current() || newConversation();
  const model = ui.model.value;
  localStorage.setItem(MODEL_KEY, model);
  conversation.model = model;
  if (!conversation.title) conversation.title = text.trim().replace(/\s+/g, " ").slice(0, TITLE_LENGTH);
  conversation.messages.push({ role: "user", content: text });
  conversation.updated = Date.now();
  render();
  const reply = { role: "assistant", content: "", model, provider: null, answeredModel: null, ttft: null,
                  error: null, stopped: false, pending: true };
  conversation.messages.push(reply);
  saveState();
  const view = messageView(reply); // kept: the stream fills this view in place
  ui.messages.append(view.root);
  scrollToEnd();
  active = { controller: new AbortController(), reply, view };
  setBusy(true);
  const started = performance.now();
  try {
    const response = await fetch(new URL("chat/completions", API), {
      method: "POST", headers: headers(), signal: active.controller.signal,
      body: JSON.stringify({ model, stream: true, messages: history(conversation, reply) }),
    });
    if (!response.ok) throw await errorFrom(response);
    reply.provider = response.headers.get("x-patchbay-provider");
    let finished = false;
    for await (const data of sseData(response)) {
      if (data === "[DONE]") {
        finished = true;
        break;
      }
      const chunk = parseEvent(data);
      if (chunk.error) throw new ApiError(chunk.error.message, { attempts: chunk.error.attempts });
      if (chunk.provider) reply.provider = chunk.provider;
      if (chunk.model) reply.answeredModel = chunk.model;
      const delta = chunk.choices?.[0]?.delta?.content;
      if (delta) {
        if (reply.ttft === null) reply.ttft = performance.now() - started;
        reply.content += delta;
        scheduleRender();
      }
    }
    if (!finished) throw new ApiError("the connection closed before the answer was complete");
  } catch (error) {
    if (error.name === "AbortError") {
      reply.stopped = true;
    } else {
      reply.error = describe(error);
      if (error.status === 401) askForKey("The server did not accept the key. Enter it again, then resend.");
    }
  } finally {
    reply.pending = false;
    fillMessage(view, reply);
    active = null;
    conversation.updated = Date.now();
    saveState();
    renderSidebar();
    setBusy(false);
  }
}

function parseEvent(data) {
  try {
    return JSON.parse(data);
  } catch {
    throw new ApiError("the server sent an event that is not JSON");
  }
}

/** What went wrong, in plain words: {title, detail, attempts}. */
function describe(error) {
  if (!(error instanceof ApiError)) {
    return { title: "Cannot reach the patchbay server.", detail: error.message };
  }
  const detail = error.message;
  const attempts = error.attempts;
  switch (error.status) {
    case null:
      return { title: "The answer broke off.", detail, attempts };
    case 401:
      return { title: "The server needs a valid API key.", detail };
    case 404:
      return { title: "The server does not know this model.", detail };
    case 413:
      return { title: "This conversation is too long for the server. Start a new chat.", detail };
    case 429: {
      const wait = error.retryAfter ? ` Try again in ${error.retryAfter} s.` : "";
      return { title: `Too many requests for now.${wait}`, detail, attempts };
    }
    case 504:
      return { title: "No provider answered in time.", detail: attempts.length ? "" : detail, attempts };
    default:
      if (attempts.length) return { title: "All providers failed.", detail: "", attempts };
      return { title: `The request failed (${error.status}).`, detail };
  }
}

function setBusy(busy) {
  ui.send.hidden = busy;
  ui.stop.hidden = !busy;
  ui.model.disabled = busy;
  if (!busy) ui.prompt.focus();
}

function resizePrompt() {
  ui.prompt.style.height = "auto";
  ui.prompt.style.height = `${ui.prompt.scrollHeight + 2}px`;
}

// ---------------------------------------------------------------- events

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = ui.prompt.value;
  if (!text.trim() || active) return;
  ui.prompt.value = "";
  resizePrompt();
  send(text);
});
ui.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});
ui.prompt.addEventListener("input", resizePrompt);
ui.stop.addEventListener("click", () => active?.controller.abort());
ui.newChat.addEventListener("click", () => {
  if (active) return;
  newConversation();
  render();
  ui.sidebar.classList.remove("open");
  ui.prompt.focus();
});
ui.toggle.addEventListener("click", () => {
  const open = ui.sidebar.classList.toggle("open");
  ui.toggle.setAttribute("aria-expanded", String(open));
});
ui.model.addEventListener("change", () => {
  localStorage.setItem(MODEL_KEY, ui.model.value);
  const conversation = current();
  if (conversation) {
    conversation.model = ui.model.value;
    saveState();
  }
});
ui.keyDialog.addEventListener("cancel", () => {
  showNotice("This server needs an API key. Reload the page to enter one.");
});
ui.keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const key = ui.keyInput.value.trim();
  if (!key) return;
  sessionStorage.setItem(API_KEY, key);
  ui.keyInput.value = "";
  ui.keyDialog.close();
  loadModels();
});

render();
loadModels();
ui.prompt.focus();
