// The demo page: follow one or more rooms with one EventSource, send with fetch.
// No framework and no build step; loaded with `defer`, so the DOM is ready.
// Message text only ever reaches the page through textContent, never as HTML.
"use strict";

const DEFAULT_EVENT = "message";
const MAX_SHOWN = 500; // keeps a long-open tab's memory bounded
const RETRY_CAP_MS = 30000;

const $ = (id) => document.getElementById(id);
const ui = {
  roomForm: $("room-form"),
  roomInput: $("room-input"),
  roomError: $("room-error"),
  roomName: $("room-name"),
  state: $("state"),
  listening: $("listening"),
  toggle: $("toggle"),
  notice: $("notice"),
  empty: $("empty"),
  feed: document.querySelector(".feed"),
  list: $("messages"),
  sendForm: $("send-form"),
  sendButton: document.querySelector("#send-form button[type=submit]"),
  sendRoom: $("send-room"),
  text: $("text"),
  eventType: $("event-type"),
  sendError: $("send-error"),
};
const serverRetryMs = Number(document.body.dataset.retryMs) || 3000;
const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });

// EventSource hands named events only to listeners registered for that name,
// so the page listens to the types named in ?types=a,b and to any it sends.
const listenedTypes = new Set(
  (new URLSearchParams(location.search).get("types") || "").split(",").map((t) => t.trim()).filter(Boolean),
);

let current = null; // { rooms, source, lastEventId, timer, failures }

// -- connection ---------------------------------------------------------------

// "a, b ,c" -> ["a", "b", "c"], each once.
function parseRooms(text) {
  return [...new Set(text.split(",").map((room) => room.trim()).filter(Boolean))];
}

function follow(rooms) {
  close();
  current = { rooms, source: null, lastEventId: null, timer: null, failures: 0 };
  ui.list.replaceChildren();
  ui.empty.hidden = false;
  const names = rooms.map((room) => `#${room}`).join(", ");
  ui.roomName.textContent = names;
  ui.roomInput.value = rooms.join(", ");
  document.title = `${names} · SSE rooms`;
  ui.sendRoom.replaceChildren(...rooms.map((room) => new Option(`#${room}`, room)));
  ui.sendRoom.hidden = rooms.length < 2;
  hide(ui.notice);
  ui.listening.hidden = true; // until counted for these rooms
  open(current);
  setTimeout(showListening, 500); // once this page's own stream is likely counted
}

function open(follower) {
  // One stream for every room: one connection whatever their number, and
  // one Last-Event-ID resumes them all.
  const params = new URLSearchParams();
  for (const room of follower.rooms) params.append("room", room);
  // A fresh EventSource forgets the last id; the query parameter carries it.
  if (follower.lastEventId) params.set("lastEventId", follower.lastEventId);
  const source = new EventSource(`/messages?${params}`);
  follower.source = source;
  setState("connecting");
  source.onopen = () => {
    if (follower !== current) return;
    follower.failures = 0;
    setState("live");
  };
  source.onerror = () => {
    if (follower !== current) return;
    if (source.readyState === EventSource.CLOSED) {
      // The browser gave up for good (an error status, such as a proxy's 502
      // while the server restarts): retry ourselves, backing off.
      follower.failures += 1;
      const delay = Math.min(serverRetryMs * 2 ** (follower.failures - 1), RETRY_CAP_MS);
      setState("reconnecting", delay);
      follower.timer = setTimeout(() => open(follower), delay);
    } else {
      setState("reconnecting", serverRetryMs); // the browser retries by itself
    }
  };
  source.onmessage = (event) => onMessage(follower, event);
  source.addEventListener("reset", (event) => onReset(follower, event));
  for (const type of listenedTypes) listenOn(follower, type);
}

function listenOn(follower, type) {
  if (type !== DEFAULT_EVENT && type !== "reset") {
    follower.source.addEventListener(type, (event) => onMessage(follower, event));
  }
}

function listen(type) {
  if (listenedTypes.has(type)) return;
  listenedTypes.add(type);
  if (current && current.source) listenOn(current, type);
}

function close() {
  if (!current) return;
  clearTimeout(current.timer);
  if (current.source) current.source.close();
  current.source = null;
}

function setState(state, delayMs) {
  const labels = {
    connecting: "connecting…",
    live: "live",
    reconnecting: `reconnecting (retry in ${Math.round(delayMs / 100) / 10} s)`,
    stopped: "stopped",
  };
  ui.state.dataset.state = state;
  ui.state.textContent = labels[state];
  ui.toggle.textContent = state === "stopped" ? "Resume" : "Stop";
}

// -- events -------------------------------------------------------------------

function parse(data) {
  try {
    return JSON.parse(data);
  } catch {
    return null;
  }
}

function onMessage(follower, event) {
  if (follower !== current) return;
  const message = parse(event.data);
  if (!message || !follower.rooms.includes(message.room)) return;
  follower.lastEventId = event.lastEventId || follower.lastEventId;
  if (ui.state.dataset.state !== "live") setState("live");
  show(message, follower.rooms.length > 1);
}

function onReset(follower, event) {
  if (follower !== current) return;
  const data = parse(event.data);
  if (!data || typeof data.reason !== "string") return;
  // The server could not resume from our last id; what follows is a full
  // replay of the rooms, so start the list again from it.
  follower.lastEventId = null;
  ui.list.replaceChildren();
  ui.empty.hidden = false;
  ui.notice.textContent = `Some messages were missed (${data.reason}); the list below is rebuilt from what the server still has.`;
  ui.notice.hidden = false;
}

function show(message, withRoom) {
  const item = document.createElement("li");
  item.className = "message";
  item.dataset.id = message.id;
  item.dataset.room = message.room;

  const time = document.createElement("time");
  time.dateTime = message.createdAt;
  const created = new Date(message.createdAt);
  time.textContent = Number.isNaN(created.getTime()) ? "" : timeFormat.format(created);
  item.append(time);

  if (withRoom) {
    const room = document.createElement("span");
    room.className = "room";
    room.textContent = `#${message.room}`;
    item.append(room);
  }

  if (message.event && message.event !== DEFAULT_EVENT) {
    const type = document.createElement("span");
    type.className = "type";
    type.textContent = message.event;
    item.append(type);
  }

  const text = document.createElement("p");
  text.className = "text";
  text.textContent = message.text;
  item.append(text);

  const atBottom = ui.feed.scrollHeight - ui.feed.scrollTop - ui.feed.clientHeight < 40;
  ui.list.append(item);
  while (ui.list.childElementCount > MAX_SHOWN) ui.list.firstElementChild.remove();
  ui.empty.hidden = true;
  if (atBottom) ui.feed.scrollTop = ui.feed.scrollHeight;
}

// -- sending ------------------------------------------------------------------

async function send() {
  const body = { room: ui.sendRoom.value || current.rooms[0], text: ui.text.value };
  const type = ui.eventType.value.trim();
  if (type) {
    body.event = type;
    listen(type); // before sending: the event can arrive before the reply
  }
  ui.sendButton.disabled = true;
  try {
    const reply = await fetch("/messages", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(body),
    });
    if (reply.ok) {
      ui.text.value = "";
      hide(ui.sendError);
    } else {
      showError(ui.sendError, await describeError(reply));
    }
  } catch {
    showError(ui.sendError, "Could not reach the server; the message was not sent.");
  } finally {
    ui.sendButton.disabled = false;
    ui.text.focus();
  }
}

async function describeError(reply) {
  const payload = parse(await reply.text());
  if (!payload || typeof payload.message !== "string") {
    return `The server answered ${reply.status} ${reply.statusText}.`;
  }
  const details = Object.entries(payload.errors || {}).flatMap(([field, messages]) =>
    [].concat(messages).map((text) => (String(text).startsWith(field) ? String(text) : `${field}: ${text}`)),
  );
  return details.length ? details.join(" ") : payload.message;
}

// -- who is listening ---------------------------------------------------------

const PRESENCE_POLL_MS = 2000;

// A bare "." or ".." path segment would be resolved away by the browser.
const presencePath = (room) => `/rooms/${/^\.\.?$/.test(room) ? room.replaceAll(".", "%2E") : room}`;

async function showListening() {
  const follower = current;
  if (!follower || document.hidden) return;
  try {
    const counts = await Promise.all(follower.rooms.map(async (room) => {
      const reply = await fetch(presencePath(room), { headers: { Accept: "application/json" } });
      if (!reply.ok) throw new Error(`${reply.status}`);
      return (await reply.json()).subscribers;
    }));
    if (follower !== current) return;
    ui.listening.textContent = follower.rooms.length === 1
      ? `${counts[0]} listening`
      : `${follower.rooms.map((room, i) => `#${room} ${counts[i]}`).join(" · ")} listening`;
    ui.listening.hidden = false;
  } catch {
    if (follower === current) ui.listening.hidden = true; // not allowed, or the server is away: say nothing
  }
}

// -- the page -----------------------------------------------------------------

function showError(element, text) {
  element.textContent = text;
  element.hidden = false;
}

function hide(element) {
  element.hidden = true;
  element.textContent = "";
}

function roomsUrl(rooms) {
  const url = new URL(location.href);
  url.searchParams.delete("room");
  for (const room of rooms) url.searchParams.append("room", room);
  return url;
}

ui.roomForm.addEventListener("submit", (event) => {
  event.preventDefault();
  if (!ui.roomInput.checkValidity()) {
    showError(ui.roomError, "Rooms are 1-64 characters from A-Z a-z 0-9 _ . -, separated by commas (at most 32)");
    return;
  }
  const rooms = parseRooms(ui.roomInput.value);
  hide(ui.roomError);
  if (current && rooms.join() === current.rooms.join()) return;
  history.pushState({ rooms }, "", roomsUrl(rooms));
  follow(rooms);
});

window.addEventListener("popstate", () => {
  const asked = new URLSearchParams(location.search).getAll("room");
  ui.roomInput.value = (asked.length ? asked : document.body.dataset.rooms.split(",")).join(", ");
  if (ui.roomInput.checkValidity()) follow(parseRooms(ui.roomInput.value));
});

ui.toggle.addEventListener("click", () => {
  if (ui.state.dataset.state === "stopped") {
    current.failures = 0;
    open(current); // resumes after the last message shown
  } else {
    close();
    setState("stopped");
  }
});

ui.sendForm.addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});

ui.text.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.sendForm.requestSubmit();
  }
});

follow(document.body.dataset.rooms.split(","));
setInterval(showListening, PRESENCE_POLL_MS);
