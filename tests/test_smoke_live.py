import pytest
import requests

from tests.support.sse_client import StreamReader


@pytest.mark.slow
def test_live_server_answers_publish_history_and_stream(start_server, store_env):
    server = start_server(**store_env)
    message = server.publish("smoke", "hello")
    history = requests.get(server.url + "/messages/history?room=smoke", timeout=5).json()
    assert [m["id"] for m in history["messages"]] == [message["id"]]
    reader = StreamReader(server.url + "/messages?room=smoke")
    try:
        assert reader.wait_for(lambda events: any(e.id == message["id"] for e in events), timeout=5)
        live = server.publish("smoke", "live")
        assert reader.wait_for(lambda events: any(e.id == live["id"] for e in events), timeout=5)
        assert [e.id for e in reader.messages] == [message["id"], live["id"]]
    finally:
        reader.close()
