// The demo page: follow one or more rooms with one EventSource, send with fetch.
// No framework and no build step; loaded with `defer`, so the DOM is ready.
// Message text only ever reaches the page through textContent, never as HTML.
"use strict";

const DEFAULT_EVENT = "message";
const MAX_SHOWN = 500; // keeps a long-open tab's memory bounded
const BACKLOG = 50; // the newest messages a stream starts with (without an id to resume from)
const OLDER_PAGE = 50; // older messages loaded at a time when scrolled to the top
const NEAR_TOP_PX = 40;
const RETRY_CAP_MS = 30000;

const $ = (id) => document.getElementById(id);
const ui = {
  roomForm: $("room-form"),
  roomInput: $("room-input"),
  roomError: $("room-error"),
  roomName: $("room-name"),
  state: $("state"),
  listening: $("listening"),
  who: $("who"),
  toggle: $("toggle"),
  notice: $("notice"),
  empty: $("empty"),
  older: $("older"),
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

let current = null; // { rooms, source, lastEventId, timer, failures, older }

// -- connection ---------------------------------------------------------------

// "a, b ,c" -> ["a", "b", "c"], each once.
function parseRooms(text) {
  return [...new Set(text.split(",").map((room) => room.trim()).filter(Boolean))];
}

function follow(rooms) {
  close();
  current = {
    rooms, source: null, lastEventId: null, timer: null, failures: 0, older: newScrollback(),
    here: new Map(), // room -> Set of the identities following it (GET /rooms/R/subscribers, then join/leave)
  };
  clearList(current);
  const names = rooms.map((room) => `#${room}`).join(", ");
  ui.roomName.textContent = names;
  ui.roomInput.value = rooms.join(", ");
  document.title = `${names} · SSE rooms`;
  ui.sendRoom.replaceChildren(...rooms.map((room) => new Option(`#${room}`, room)));
  ui.sendRoom.hidden = rooms.length < 2;
  hide(ui.notice);
  ui.listening.hidden = true; // until counted for these rooms
  ui.who.hidden = true;
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
  // Without an id to resume from, only the newest messages (older ones load
  // on scrolling up); with one, the server ignores it and resumes exactly.
  params.set("backlog", String(BACKLOG));
  // Every message as the default event, its type in the JSON: EventSource
  // hands a named event only to a listener for that name, and the page cannot
  // know every type a room's publishers use.
  params.set("untyped", "true");
  // Who comes and goes: join and leave events (they carry no id, so the last id stays the last message's).
  params.set("presence", "1");
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
  source.addEventListener("join", (event) => onPresence(follower, event, true));
  source.addEventListener("leave", (event) => onPresence(follower, event, false));
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
  // The server could not resume from our last id; what follows is the
  // rooms' newest messages, so start the list again from them.
  follower.lastEventId = null;
  follower.older = newScrollback();
  clearList(follower);
  ui.notice.textContent = `Some messages were missed (${data.reason}); the list below is rebuilt from what the server still has.`;
  ui.notice.hidden = false;
}

function clearList(follower) {
  ui.list.replaceChildren();
  ui.empty.hidden = false;
  showOlderState(follower);
}

function render(message, withRoom) {
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
  return item;
}

function show(message, withRoom) {
  const item = render(message, withRoom);
  const atBottom = ui.feed.scrollHeight - ui.feed.scrollTop - ui.feed.clientHeight < 40;
  ui.list.append(item);
  while (ui.list.childElementCount > MAX_SHOWN) ui.list.firstElementChild.remove();
  ui.empty.hidden = true;
  if (atBottom) ui.feed.scrollTop = ui.feed.scrollHeight;
  showOlderState(current);
}

// -- scrollback ---------------------------------------------------------------

// "idle": older ones may be there; "loading"; "done": the server keeps no older
// ones; "full": MAX_SHOWN are shown. Each follow and each reset starts afresh
// (a page answered for an older list is dropped: the object is not the same).
function newScrollback() {
  return { state: "idle" };
}

async function loadOlder() {
  const follower = current;
  const oldest = ui.list.querySelector(".message"); // not a join or leave line: it has no id
  if (!follower || !oldest || follower.older.state !== "idle") return;
  if (ui.list.childElementCount >= MAX_SHOWN) {
    follower.older.state = "full";
    showOlderState(follower);
    return;
  }
  const scrollback = follower.older;
  scrollback.state = "loading";
  showOlderState(follower);
  const params = new URLSearchParams();
  for (const room of follower.rooms) params.append("room", room);
  params.set("before", oldest.dataset.id);
  params.set("limit", String(Math.min(OLDER_PAGE, MAX_SHOWN - ui.list.childElementCount)));
  let page = null;
  try {
    const reply = await fetch(`/messages/history?${params}`, { headers: { Accept: "application/json" } });
    if (reply.ok) page = await reply.json();
  } catch {
    // the server is away: try again on the next scroll
  }
  if (follower !== current || scrollback !== follower.older) return; // switched rooms, or reset, meanwhile
  if (!page || !Array.isArray(page.messages)) {
    scrollback.state = "idle";
  } else if (page.reset) {
    // The oldest shown has left the server's window: so has everything older.
    scrollback.state = "done";
  } else {
    prepend(page.messages, follower.rooms.length > 1);
    scrollback.state = page.hasMore ? "idle" : "done";
  }
  showOlderState(follower);
}

function prepend(messages, withRoom) {
  // Keep what the reader is looking at in place while the list grows above it.
  const fromBottom = ui.feed.scrollHeight - ui.feed.scrollTop;
  ui.list.prepend(...messages.map((message) => render(message, withRoom)));
  ui.feed.scrollTop = ui.feed.scrollHeight - fromBottom;
}

function showOlderState(follower) {
  const state = follower && ui.list.childElementCount ? follower.older.state : "none";
  const labels = {
    idle: "Load older messages",
    loading: "Loading older messages…",
    done: "No older messages are kept.",
    full: `Showing the ${MAX_SHOWN} most recent messages.`,
  };
  ui.older.hidden = state === "none";
  ui.older.dataset.state = state;
  ui.older.textContent = labels[state] || "";
  ui.older.disabled = state !== "idle";
}

// -- sending ------------------------------------------------------------------

async function send() {
  const body = { room: ui.sendRoom.value || current.rooms[0], text: ui.text.value };
  const type = ui.eventType.value.trim();
  if (type) body.event = type;
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
  showWho(follower);
  try {
    const counts = await Promise.all(follower.rooms.map(async (room) => {
      const reply = await fetch(presencePath(room), { headers: { Accept: "application/json" } });
      if (!reply.ok) throw new Error(`${reply.status}`);
      return (await reply.json()).subscribers;
    }));
    if (follower !== current) return;
    showCounts(follower, counts);
  } catch {
    if (follower === current) ui.listening.hidden = true; // not allowed, or the server is away: say nothing
  }
}

function showCounts(follower, counts) {
  ui.listening.textContent = follower.rooms.length === 1
    ? `${counts[0]} listening`
    : `${follower.rooms.map((room, i) => `#${room} ${counts[i]}`).join(" · ")} listening`;
  ui.listening.hidden = false;
}

// -- who is here --------------------------------------------------------------

const WHO_SHOWN = 8; // names in the header; the rest are counted
const WHO_PAGE = 100;

async function showWho(follower) {
  try {
    const pages = await Promise.all(follower.rooms.map(async (room) => {
      const reply = await fetch(`${presencePath(room)}/subscribers?limit=${WHO_PAGE}`,
        { headers: { Accept: "application/json" } });
      if (!reply.ok) throw new Error(`${reply.status}`);
      return (await reply.json()).subscribers;
    }));
    if (follower !== current) return;
    follower.rooms.forEach((room, i) => follower.here.set(room, new Set(pages[i].map((entry) => String(entry.sub)))));
    renderWho(follower);
  } catch {
    if (follower === current) ui.who.hidden = true;
  }
}

function renderWho(follower) {
  const names = [...new Set([...follower.here.values()].flatMap((subs) => [...subs]))].sort();
  const more = names.length > WHO_SHOWN ? ` and ${names.length - WHO_SHOWN} more` : "";
  ui.who.textContent = `here: ${names.slice(0, WHO_SHOWN).join(", ")}${more}`;
  ui.who.title = names.join(", ");
  ui.who.hidden = names.length === 0;
}

function onPresence(follower, event, joined) {
  if (follower !== current) return;
  const data = parse(event.data);
  if (!data || !follower.rooms.includes(data.room) || typeof data.sub !== "string") return;
  const subs = follower.here.get(data.room) || new Set();
  if (joined) subs.add(data.sub); else subs.delete(data.sub);
  follower.here.set(data.room, subs);
  renderWho(follower);
  if (follower.rooms.length === 1 && Number.isInteger(data.subscribers)) showCounts(follower, [data.subscribers]);
  announce(`${data.sub} ${joined ? "joined" : "left"}`, follower.rooms.length > 1 ? data.room : null);
}

// A line in the feed between the messages: who joined or left, and when.
function announce(text, room) {
  const item = document.createElement("li");
  item.className = "presence-note";
  const time = document.createElement("time");
  const now = new Date();
  time.dateTime = now.toISOString();
  time.textContent = timeFormat.format(now);
  const words = document.createElement("span");
  words.textContent = room ? `${text} #${room}` : text;
  item.append(time, words);
  const atBottom = ui.feed.scrollHeight - ui.feed.scrollTop - ui.feed.clientHeight < 40;
  ui.list.append(item);
  while (ui.list.childElementCount > MAX_SHOWN) ui.list.firstElementChild.remove();
  if (atBottom) ui.feed.scrollTop = ui.feed.scrollHeight;
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
  // room repeated, or comma-separated (/?room=lobby,ops), as the server reads it.
  const asked = parseRooms(new URLSearchParams(location.search).getAll("room").join(","));
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

// Only a scroll *up* loads: the page's own scrolls to the newest message go
// down, and one of them can land near the top while the list is short.
let lastScrollTop = 0;
ui.feed.addEventListener("scroll", () => {
  const top = ui.feed.scrollTop;
  if (top < lastScrollTop && top < NEAR_TOP_PX) loadOlder();
  lastScrollTop = top;
}, { passive: true });

ui.older.addEventListener("click", () => loadOlder());

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
