"""A small Flask application with its own session login, acting as sse-rooms' subscribe hook.

It stands for the application an operator already runs: people log in on it
(a form, a signed session cookie, nothing about JWTs), and sse-rooms asks it
at ``POST /sse-auth`` who may read which rooms. It runs in a thread of the
test process on a real server (werkzeug's, threaded) on loopback, so tests
can see what it was asked and switch how it answers:

* ``behaviour``: ``"normal"``, ``"slow"`` (sleeps ``slow_seconds`` first),
  ``"garbage"`` (a 200 whose body is ``garbage_body``), ``"fewer"`` (names
  only the first room asked), ``"error"`` (500), ``"status"`` (an empty
  answer with ``status``, e.g. a redirect), ``"drip"`` (a 200 that sends
  its body a byte every 0.2 s, for ever);
* ``expires_in``: the ``expiresIn`` it answers (None: left out);
* ``bearer_users``: the application's own opaque bearer tokens, each a user's;
* ``calls``, ``in_flight_peak``: how many questions it got, and most at once.

Cookies are not port-scoped, so the session cookie it sets for 127.0.0.1
reaches an sse-rooms server on another port of 127.0.0.1 (the same site).
"""
from __future__ import annotations

import secrets
import threading
import time
from typing import Any

from flask import Flask, jsonify, redirect, request, session
from werkzeug.serving import make_server

from tests.support.live import free_port

HOOK_PATH = "/sse-auth"
# Who may log in, with which password, and the rooms each may read.
USERS: dict[str, tuple[str, list[str]]] = {
    "ada": ("ada-password", ["team-*"]),
    "bob": ("bob-password", ["team-blue"]),
    "service": ("service-password", ["*"]),
}
LOGIN_PAGE = """<!doctype html>
<meta charset="utf-8"><title>log in</title>
<form method="post" action="/login">
  <input id="user" name="user"> <input id="password" name="password" type="password">
  <button id="log-in" type="submit">Log in</button>
</form>
"""
# After the login: the room, followed on the SSE server with the session cookie (withCredentials: it is
# another origin of the same site).
FOLLOW_PAGE = """<!doctype html>
<meta charset="utf-8"><title>following</title>
<p id="who">{user}</p><p id="state">starting</p>
<script>
const asked = new URLSearchParams(location.search);
window.__streamUrl = asked.get("server") + "/messages?room=" + encodeURIComponent(asked.get("room"));
window.__received = []; window.__opened = 0;
const source = new EventSource(window.__streamUrl, {{withCredentials: true}});
source.onopen = () => {{ window.__opened += 1; document.getElementById("state").textContent = "open"; }};
source.onmessage = (event) => {{ window.__received.push(JSON.parse(event.data).text); }};
source.onerror = () => {{ document.getElementById("state").textContent = "error"; }};
window.__source = source;
</script>
"""


class HookApp:
    """The application and its server; ``url`` is where it listens, ``hook_url`` its hook."""

    def __init__(self) -> None:
        self.behaviour = "normal"
        self.slow_seconds = 5.0
        self.garbage_body = b"not json"
        self.status = 302
        self.expires_in: float | None = None
        # The application's own opaque bearer tokens (not JWTs): token -> user.
        self.bearer_users: dict[str, str] = {}
        self.calls: list[dict[str, Any]] = []
        self.in_flight = 0
        self.in_flight_peak = 0
        self._lock = threading.Lock()
        self.app = self._make_app()
        self.port = free_port()
        self._server = make_server("127.0.0.1", self.port, self.app, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def hook_url(self) -> str:
        return self.url + HOOK_PATH

    def start(self) -> HookApp:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def login_cookie(self, user: str) -> str:
        """Log in as ``user`` without a browser; return the Cookie header value it would send."""
        import requests

        with requests.Session() as browser:
            reply = browser.post(self.url + "/login", data={"user": user, "password": USERS[user][0]},
                                 allow_redirects=False, timeout=5)
            assert reply.status_code == 303, reply.text
            return "; ".join(f"{name}={value}" for name, value in browser.cookies.items())

    def _make_app(self) -> Flask:
        app = Flask("hook_app")
        app.secret_key = secrets.token_bytes(32)

        @app.get("/login")
        def login_form():
            return LOGIN_PAGE

        @app.post("/login")
        def login():
            user = request.form.get("user", "")
            if user not in USERS or not secrets.compare_digest(request.form.get("password", ""), USERS[user][0]):
                return LOGIN_PAGE, 401
            session["user"] = user
            return redirect(request.args.get("next") or "/follow", code=303)

        @app.get("/follow")
        def follow():
            return FOLLOW_PAGE.format(user=session.get("user", "nobody"))

        @app.post(HOOK_PATH)
        def hook():
            with self._lock:
                self.in_flight += 1
                self.in_flight_peak = max(self.in_flight_peak, self.in_flight)
            try:
                return self._answer()
            finally:
                with self._lock:
                    self.in_flight -= 1

        return app

    def _answer(self):
        question = request.get_json()  # 415 unless sent as application/json
        self.calls.append({"json": question, "cookie": request.headers.get("Cookie"),
                           "authorization": request.headers.get("Authorization"),
                           "content_type": request.headers.get("Content-Type")})
        if self.behaviour == "slow":
            time.sleep(self.slow_seconds)  # a real thread of the server: the hook is slow, not the test
        if self.behaviour == "error":
            return jsonify({"error": "the hook broke"}), 500
        if self.behaviour == "status":
            return "", self.status, {"Location": "/elsewhere"}
        if self.behaviour == "drip":
            def drip():
                for _ in range(100):
                    time.sleep(0.2)
                    yield b" "
            return drip(), 200, {"Content-Type": "application/json"}
        if self.behaviour == "garbage":
            return self.garbage_body, 200, {"Content-Type": "application/json"}
        scheme, _, credentials = (request.headers.get("Authorization") or "").partition(" ")
        user = session.get("user") or (self.bearer_users.get(credentials) if scheme == "Bearer" else None)
        if user is None:
            return jsonify({"error": "log in first"}), 401
        allowed = USERS[user][1]
        if self.behaviour == "fewer":
            allowed = question["rooms"][:1]
        answer: dict[str, Any] = {"sub": user, "rooms": allowed}
        if self.expires_in is not None:
            answer["expiresIn"] = self.expires_in
        return jsonify(answer)
