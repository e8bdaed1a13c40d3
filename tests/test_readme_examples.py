"""The README's curl examples, run as written against real gunicorn, so that they stay true.

The examples are read from README.md's ``sh``/``bash`` blocks (a line starting
with ``curl``, joined over ``\\`` continuations), never copied here: an example
that goes stale fails this test. Each runs with the real ``curl``, its
``localhost:8080`` pointed at the live server, in README order (the POST comes
first and its message is what the later ones read). What the README shows in
the ``#`` lines after an example is held too: the status (``# 201 ...``), the
top-level fields of a JSON answer written out whole, a stream's ``retry:``
line. The example id shown in the README's POST answer stands for the id the
server really gave, so the resume examples resume after a message it holds.

A stream example must deliver a message published while it is open (curl's
``--max-time`` bounds it either way); one with ``Last-Event-ID`` must resume
after that id: no ``reset``, the id's message not sent again.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from app.config import Settings

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[1] / "README.md"
SHELL_BLOCK = re.compile(r"^```(?:sh|bash|shell)\n(.*?)^```", re.MULTILINE | re.DOTALL)
README_ADDRESS = re.compile(r"(?:localhost|127\.0\.0\.1):8080")
DOCUMENTED_STATUS = re.compile(r"(\d{3})\b\s*(.*)")
ANSWER_SECONDS = 10  # curl's --max-time for an example that answers and ends
STREAM_SECONDS = 20  # and for a stream: it ends the stream if the published message never comes


@dataclass
class Example:
    """One curl command of the README, with the lines the README shows after it."""

    line: int  # in README.md, for the failure message
    command: str
    shown: list[str] = field(default_factory=list)  # the ``#`` lines after it, without the ``#``

    @property
    def shown_status(self) -> int | None:
        match = DOCUMENTED_STATUS.fullmatch(self.shown[0].strip()) if self.shown else None
        return int(match.group(1)) if match else None

    @property
    def shown_json(self) -> dict | None:
        """Return the JSON answer the README shows, when it shows one whole on one line."""
        if not self.shown:
            return None
        first = self.shown[0].strip()
        match = DOCUMENTED_STATUS.fullmatch(first)
        text = match.group(2) if match else first
        try:
            shown = json.loads(text)
        except ValueError:
            return None
        return shown if isinstance(shown, dict) else None

    @property
    def shown_retry(self) -> str | None:
        return next((line.strip() for line in self.shown if line.strip().startswith("retry:")), None)


def _drawn_around_the_default(line: str) -> bool:
    """Say whether ``line`` is a ``retry:`` line the defaults can draw: RETRY_MS x (1 +- RETRY_JITTER)."""
    settings = Settings()
    match = re.match(r"retry: (\d+)(\s|$)", line.strip())
    low, high = settings.retry_ms * (1 - settings.retry_jitter), settings.retry_ms * (1 + settings.retry_jitter)
    return match is not None and low <= int(match[1]) <= high


def readme_examples(text: str) -> list[Example]:
    """Return every curl command of the README's shell blocks, in order, with the comments right after it."""
    examples: list[Example] = []
    for block in SHELL_BLOCK.finditer(text):
        first_line = text.count("\n", 0, block.start(1)) + 1
        lines = block.group(1).split("\n")
        current: Example | None = None  # the example the next comment lines belong to
        number = 0
        while number < len(lines):
            line, start = lines[number], number
            while line.endswith("\\") and number + 1 < len(lines):
                number += 1
                line = line[:-1] + " " + lines[number].strip()
            number += 1
            stripped = line.strip()
            if stripped.startswith("curl "):
                current = Example(first_line + start, stripped)
                examples.append(current)
            elif stripped.startswith("#") and current is not None:
                current.shown.append(stripped[1:])
            else:  # a blank line or another command: later comments say something else
                current = None
    return examples


def curl_arguments(example: Example, port: int, ids: dict[str, str], max_time: int) -> list[str]:
    """Return the example's argv for the live server: its address, the ids it really gave, a time bound."""
    command = README_ADDRESS.sub(f"127.0.0.1:{port}", example.command)
    for shown, real in ids.items():
        command = command.replace(shown, real)
    argv = shlex.split(command, comments=True)
    assert argv[0] == "curl"
    # -sS: no progress bar, errors still said; -i: the status and headers come first on stdout.
    return [shutil.which("curl") or "curl", "-sS", "-i", "--max-time", str(max_time), *argv[1:]]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def read_head(stdout) -> tuple[int, dict[str, str]]:
    """Read the status line and headers curl wrote (``-i``)."""
    status_line = stdout.readline().decode("latin-1")
    assert status_line.startswith("HTTP/"), f"curl wrote no status line, but {status_line!r}"
    headers = {}
    for raw in iter(stdout.readline, b""):
        line = raw.decode("latin-1").rstrip("\r\n")
        if not line:
            break
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


def run_answer(argv: list[str]) -> Answer:
    done = subprocess.run(argv, capture_output=True, timeout=ANSWER_SECONDS + 5)
    assert done.returncode == 0, f"curl exited with {done.returncode}: {done.stderr.decode(errors='replace')}"
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip()
               for name, _, value in (line.partition(":") for line in header_lines)}
    return Answer(int(status_line.split()[1]), headers, body)


def run_stream(argv: list[str], publish_to: str, url: str) -> tuple[Answer, str]:
    """Open the stream with curl, publish one message once it has begun, read until it arrives.

    Return the answer (its body: every line read) and the id of the message published.
    """
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        status, headers = read_head(process.stdout)
        lines: list[bytes] = []
        published_id = None
        marker = f"published while the README's stream example was open {uuid.uuid4().hex}"
        # readline returns at curl's --max-time at the latest (its stdout closes then).
        for raw in iter(process.stdout.readline, b""):
            lines.append(raw)
            if status != 200:
                continue
            if published_id is None and raw.startswith(b"retry:"):
                reply = requests.post(url + "/messages", json={"room": publish_to, "text": marker}, timeout=5)
                reply.raise_for_status()
                published_id = reply.json()["id"]
            elif published_id is not None and raw.startswith(b"data:") and marker.encode() in raw:
                break
        return Answer(status, headers, b"".join(lines)), published_id
    finally:
        process.terminate()  # our own curl, by its handle
        process.wait(5)
        process.stdout.close()
        process.stderr.close()


@pytest.fixture(scope="module")
def examples() -> list[Example]:
    found = readme_examples(README.read_text(encoding="utf-8"))
    # Not vacuous: the README's usage block publishes, streams and reads.
    assert any("-X POST" in example.command for example in found), "no POST example found in the README"
    assert any(" -N " in example.command for example in found), "no stream example found in the README"
    return found


def test_the_examples_are_read_from_the_readme(examples):
    post = next(example for example in examples if "-X POST" in example.command)
    assert "\\" not in post.command, "continuation lines are joined into one command"
    assert post.shown_status == 201 and post.shown_json and "id" in post.shown_json
    assert all(example.command.startswith("curl ") for example in examples)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed (.ci/system-deps installs it)")
def test_every_readme_curl_example_works_against_a_live_server(start_server, examples):
    server = start_server()
    ids: dict[str, str] = {}  # id the README shows -> id the server gave
    failures: list[str] = []
    ran = 0
    for example in examples:
        where = f"README.md line {example.line}: {example.command}"
        streams = " -N " in f" {example.command} "
        argv = curl_arguments(example, server.port, ids, STREAM_SECONDS if streams else ANSWER_SECONDS)
        assert f"127.0.0.1:{server.port}" in " ".join(argv), f"{where}: does not name the README's localhost:8080"
        url = next(arg for arg in argv if f"127.0.0.1:{server.port}" in arg)
        try:
            if streams:
                rooms = parse_qs(urlsplit(url if "://" in url else "http://" + url).query).get("room", [])
                answer, published_id = run_stream(argv, rooms[0] if rooms else "developers", server.url)
            else:
                answer, published_id = run_answer(argv), None
        except (AssertionError, subprocess.TimeoutExpired, requests.RequestException) as exc:
            failures.append(f"{where}\n    {exc}")
            continue
        finally:
            ran += 1
        problems = check(example, answer, published_id, ids)
        failures += [f"{where}\n    {problem}" for problem in problems]
        if not problems and example.shown_json and "id" in example.shown_json:
            ids[example.shown_json["id"]] = json.loads(answer.body)["id"]
    assert ran == len(examples)
    assert not failures, "README examples that no longer hold:\n" + "\n".join(failures)


def check(example: Example, answer: Answer, published_id: str | None, ids: dict[str, str]) -> list[str]:
    """Return what is wrong with one example's answer (nothing: it holds)."""
    expected = example.shown_status
    if expected is not None and answer.status != expected:
        return [f"answered {answer.status}, the README shows {expected}: {answer.body[:300]!r}"]
    if not 200 <= answer.status < 300:
        return [f"answered {answer.status}: {answer.body[:300]!r}"]
    problems = []
    if answer.headers.get("content-type", "").startswith("text/event-stream"):
        body = answer.body.decode("utf-8", errors="replace")
        if published_id is None:
            problems.append(f"the stream never sent its retry: line: {body[:300]!r}")
        elif f"id: {published_id}" not in body:
            problems.append(f"a message published meanwhile ({published_id}) never arrived: {body[-300:]!r}")
        if example.shown_retry and not (_drawn_around_the_default(example.shown_retry)
                                        and _drawn_around_the_default(body.split("\n", 1)[0])):
            problems.append(f"the stream began {body[:40]!r}, the README shows {example.shown_retry!r}"
                            " (both must be RETRY_MS x (1 +- RETRY_JITTER), the defaults)")
        resumed_after = re.search(r'Last-Event-ID:\s*([^"\']+)', example.command)
        if resumed_after:
            shown_id = resumed_after.group(1).strip()
            real_id = ids.get(shown_id, shown_id)
            if re.search(r"^event: reset$", body, re.MULTILINE):
                problems.append(f"resuming after {real_id} sent a reset: {body[:300]!r}")
            if f"id: {real_id}\n" in body:
                problems.append(f"resuming after {real_id} sent that message again")
    elif example.shown_json is not None:
        try:
            got = json.loads(answer.body)
        except ValueError:
            return [f"the README shows a JSON answer, the server sent {answer.body[:300]!r}"]
        if set(got) != set(example.shown_json):
            problems.append(f"fields {sorted(got)}, the README shows {sorted(example.shown_json)}")
    return problems
