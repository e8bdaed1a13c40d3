"""Configuration: defaults, parsing, and a clear stop on bad values."""
import subprocess

import pytest

from app.config import ConfigError, Settings
from tests.support.live import GUNICORN, ROOT


def test_defaults_match_the_readme():
    settings = Settings.from_env({})
    assert (settings.host, settings.port, settings.web_concurrency) == ("127.0.0.1", 8080, 2)
    assert (settings.capped_size_bytes, settings.capped_max_messages) == (5_000_000, 10_000)
    assert (settings.heartbeat_seconds, settings.retry_ms, settings.max_text_chars) == (15.0, 3000, 4096)
    assert settings.store_kind == "sqlite"


def test_values_are_parsed():
    settings = Settings.from_env({"PORT": "9000", "HEARTBEAT_SECONDS": "0.5", "CAPPED_SIZE_BYTES": "1_000_000",
                                  "MONGODB_URI": "mongodb://db:27017", "MAX_TEXT_CHARS": "100"})
    assert (settings.port, settings.heartbeat_seconds, settings.capped_size_bytes) == (9000, 0.5, 1_000_000)
    assert settings.store_kind == "mongodb"
    assert settings.max_body_bytes == 6 * 100 + 1024


@pytest.mark.parametrize("name, value", [
    ("PORT", "eighty"), ("PORT", "70000"), ("WEB_CONCURRENCY", "0"), ("HEARTBEAT_SECONDS", "-1"),
    ("HEARTBEAT_SECONDS", "soon"), ("CAPPED_MAX_MESSAGES", "0"), ("CAPPED_SIZE_BYTES", "10"),
    ("RETRY_MS", "-5"), ("MAX_TEXT_CHARS", "1.5"), ("MONGODB_URI", "localhost:27017"), ("LOG_LEVEL", "loud"),
])
def test_bad_values_stop_with_a_sentence_naming_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_secrets_are_not_logged():
    summary = Settings.from_env({"MONGODB_URI": "mongodb://user:hunter2@db:27017/x"}).public_summary()
    assert "hunter2" not in str(summary) and summary["mongodb_uri"] == "mongodb://***@db:27017/x"


def test_tls_files_a_mongodb_uri_names_must_be_readable(tmp_path):
    """A missing tlsCAFile failed every worker with a 140-line traceback (issue 18)."""
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    uri = f"mongodb://db:27017/?tls=true&tlsCAFile={ca}"
    assert Settings.from_env({"MONGODB_URI": uri}).mongodb_uri == uri
    for option in ("tlsCAFile", "tlscafile", "tlsCertificateKeyFile", "tlsCRLFile"):
        with pytest.raises(ConfigError, match=f"MONGODB_URI=.* {option}={tmp_path}/missing.pem is not a file"):
            Settings.from_env({"MONGODB_URI": f"mongodb://db:27017/?tls=true&{option}={tmp_path}/missing.pem"})


def test_a_rejected_mongodb_uri_is_shown_without_its_password(tmp_path):
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"MONGODB_URI": f"mongodb://user:hunter2@db/?tlsCAFile={tmp_path}/missing.pem"})
    assert "hunter2" not in str(refused.value) and "mongodb://***@db/" in str(refused.value)


@pytest.mark.slow
@pytest.mark.parametrize("name, value, shown", [
    ("CAPPED_SIZE_BYTES", "abc", "CAPPED_SIZE_BYTES='abc' is not valid"),
    ("HEARTBEAT_SECONDS", "never", "HEARTBEAT_SECONDS='never' is not valid"),
    ("PUBLISH_TOKEN", "short secret", "PUBLISH_TOKEN='***' is not valid"),
    ("PUBLIC_ROOMS", "lobby", "PUBLIC_ROOMS is set but neither AUTH_JWT_SECRET nor AUTH_JWT_PUBLIC_KEY is"),
    ("MONGODB_URI", "mongodb://u:hunter2@db/?tls=true&tlsCAFile=/no/ca.pem",
     "MONGODB_URI='mongodb://***@db/?tls=true&tlsCAFile=/no/ca.pem' is not valid: tlsCAFile=/no/ca.pem is not"),
], ids=["not-a-number", "not-seconds", "secret-not-echoed", "checked-after-parsing", "tls-ca-file-missing"])
def test_gunicorn_refuses_to_start_with_one_line_naming_the_variable(tmp_path, name, value, shown):
    """A bad value used to end in a 14-line traceback under "Failed to read config file" (issue 18)."""
    result = subprocess.run([str(GUNICORN), "-c", "gunicorn.conf.py", "wsgi:app"], cwd=ROOT, timeout=30,
                            env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path), name: value},
                            capture_output=True, text=True)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"sse-rooms: {shown}")
    assert "secret" not in result.stderr and "hunter2" not in result.stderr
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []  # stopped before making its metrics directory
