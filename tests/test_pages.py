"""The demo page as served: template, policy, static files (no browser needed)."""
from html.parser import HTMLParser

import pytest

from app.edge.security import CONTENT_SECURITY_POLICY


class _Inventory(HTMLParser):
    """Collect what a Content-Security-Policy without 'unsafe-inline' would block."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict] = []
        self.inline: list[str] = []
        self.body: dict = {}

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "script":
            self.scripts.append(attributes)
        if tag == "style":
            self.inline.append("<style>")
        if tag == "body":
            self.body = attributes
        self.inline.extend(f"{tag} {name}=" for name in attributes if name == "style" or name.startswith("on"))

    def handle_data(self, data):
        if self.lasttag == "script" and data.strip():
            self.inline.append("inline script")


def _inventory(html: str) -> _Inventory:
    parser = _Inventory()
    parser.feed(html)
    return parser


def test_page_sends_a_policy_that_forbids_inline_script_and_style(client):
    reply = client.get("/?room=lobby")

    assert reply.status_code == 200
    assert reply.mimetype == "text/html"
    policy = reply.headers["Content-Security-Policy"]
    assert policy == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in policy and "style-src 'self'" in policy and "unsafe-inline" not in policy


def test_page_has_no_inline_script_style_or_handlers(client):
    page = _inventory(client.get("/?room=lobby").get_data(as_text=True))

    assert page.inline == []
    assert [script.get("src") for script in page.scripts] == ["/static/demo.js"]


@pytest.mark.parametrize("query, rooms", [
    ("", "lobby"),
    ("?room=kitchen", "kitchen"),
    ("?room=a.b_c-9", "a.b_c-9"),
    ("?room=kitchen&room=garden&room=kitchen", "kitchen,garden"),
    ("?room=lobby,ops", "lobby,ops"),
    ("?room=lobby,%20ops&room=ops,kitchen,", "lobby,ops,kitchen"),
], ids=["default", "named", "every-allowed-character", "several", "comma-separated", "commas-and-repeats"])
def test_page_follows_the_rooms_in_the_url(client, query, rooms):
    page = _inventory(client.get("/" + query).get_data(as_text=True))

    assert page.body["data-rooms"] == rooms


@pytest.mark.parametrize("bad", ['"><script>alert(1)</script>', "has space", "x" * 65],
                         ids=["markup", "space", "too-long"])
def test_page_falls_back_to_the_default_room_and_says_why(client, bad):
    reply = client.get("/", query_string={"room": bad})
    html = reply.get_data(as_text=True)

    assert reply.status_code == 200
    assert _inventory(html).body["data-rooms"] == "lobby"
    assert "rooms must be" in html
    assert "<script>alert" not in html


def test_page_tells_the_script_the_servers_retry_delay(sqlite_path):
    from app import create_app

    client = create_app({"SQLITE_PATH": sqlite_path, "RETRY_MS": "1234"}).test_client()

    assert _inventory(client.get("/").get_data(as_text=True)).body["data-retry-ms"] == "1234"


@pytest.mark.parametrize("name, mimetype", [
    ("demo.js", "text/javascript"),
    ("demo.css", "text/css"),
    ("favicon.svg", "image/svg+xml"),
])
def test_static_files_are_served(client, name, mimetype):
    reply = client.get(f"/static/{name}")

    assert reply.status_code == 200
    assert reply.mimetype == mimetype
    reply.close()
