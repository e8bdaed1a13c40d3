import pytest
import requests


@pytest.mark.slow
def test_live_server_answers_publish_and_history(live_server):
    message = live_server.publish("smoke", "hello")
    history = requests.get(live_server.url + "/messages/history?room=smoke", timeout=5).json()
    assert [m["id"] for m in history["messages"]] == [message["id"]]
