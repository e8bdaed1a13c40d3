"""/openapi.json: a valid OpenAPI 3 document covering every route the app serves."""
from __future__ import annotations

import re

import pytest
import schemathesis

from app import create_app

TOKEN = "doc-token-0123456789abc"


@pytest.fixture
def document(sqlite_path):
    app = create_app({"SQLITE_PATH": sqlite_path, "PUBLISH_TOKEN": TOKEN, "PUBLISH_RATE": "5/second",
                      "MAX_TEXT_CHARS": "300"})
    return app, app.test_client().get("/openapi.json").json


def test_every_messages_and_rooms_route_and_method_is_documented(document):
    app, spec = document
    # Flask's /rooms/<converter:room> is OpenAPI's /rooms/{room}.
    served = {(re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower()) for rule in app.url_map.iter_rules()
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(path, method) for path, operations in spec["paths"].items() for method in operations}

    assert documented <= served
    # The API lives under /messages and /rooms; pages and operational endpoints are not part of it.
    assert {route for route in served if route[0].startswith(("/messages", "/rooms"))} <= documented


def test_schemathesis_accepts_the_document(document):
    _, spec = document
    schema = schemathesis.openapi.from_dict(spec)

    assert len([result.ok() for result in schema.get_all_operations()]) == 7


def test_document_states_the_running_limits_and_access_rules(document):
    _, spec = document
    post = spec["paths"]["/messages"]["post"]
    message_in = spec["components"]["schemas"]["MessageIn"]

    assert spec["openapi"].startswith("3.")
    assert message_in["properties"]["text"]["maxLength"] == 300
    assert message_in["additionalProperties"] is False
    assert post["security"] == [{"bearerAuth": []}]
    assert {"201", "400", "401", "413", "415", "422", "429", "503"} <= set(post["responses"])
    assert "WWW-Authenticate" in post["responses"]["401"]["headers"]
    assert "Retry-After" in post["responses"]["429"]["headers"]
    stream = spec["paths"]["/messages"]["get"]["responses"]["200"]["content"]
    assert list(stream) == ["text/event-stream"]


def test_without_token_or_rate_the_document_promises_neither(client):
    post = client.get("/openapi.json").json["paths"]["/messages"]["post"]

    assert "security" not in post and "401" not in post["responses"] and "429" not in post["responses"]
