"""Real nginx (Debian's) on a loopback port, running deploy/nginx.conf in front of a LiveServer.

The server block is rendered from deploy/nginx.conf by replacing only its
DEPLOY: values -- ports (plain and HTTPS), the certificate (a self-signed one
made for each nginx), the static path, the access log's path and, where a
test asks, the stream's read timeout or a per-client limit too large to reach
here -- so what is tested is what is deployed. The http {} around it
is the test's own, with every file nginx writes kept in a temp folder.
"""
from __future__ import annotations

import getpass
import os
import signal
import socket
import subprocess
from pathlib import Path

from tests.support.live import ROOT, free_port
from tests.support.tls import SelfSigned, make_self_signed
from tests.support.waiting import wait_until

NGINX = Path(os.environ.get("NGINX", "/usr/sbin/nginx"))
DEPLOY_CONF = ROOT / "deploy" / "nginx.conf"

_HTTP_WRAPPER = """\
# Written by tests/support/nginx.py: a minimal main context around deploy/nginx.conf.
{user}worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 1024; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    include {dir}/sse-rooms.conf;
}}
"""


def render_server_block(*, upstream_port: int, listen_port: int, tls_port: int, certificate: SelfSigned,
                        log_dir: Path, read_timeout: str = "60s", tuned: dict[str, str] | None = None) -> str:
    """Return deploy/nginx.conf with its DEPLOY: values replaced for a loopback test.

    ``tuned`` replaces more lines, after those, each of which must be there
    exactly once: a test of a limit too large to reach here (2000 streams)
    lowers it.
    """
    text = DEPLOY_CONF.read_text()
    replacements = {
        "access_log /var/log/nginx/sse-rooms.access.log sse_rooms;":
            f"access_log {log_dir}/sse-rooms.access.log sse_rooms;",
        "server 127.0.0.1:8080;": f"server 127.0.0.1:{upstream_port};",
        "listen 80;": f"listen 127.0.0.1:{listen_port};",
        "listen 443 ssl http2;": f"listen 127.0.0.1:{tls_port} ssl http2;",
        "ssl_certificate     /etc/ssl/certs/sse-rooms.pem;": f"ssl_certificate     {certificate.cert_path};",
        "ssl_certificate_key /etc/ssl/private/sse-rooms.key;": f"ssl_certificate_key {certificate.key_path};",
        "alias /srv/sse-rooms/app/static/;": f"alias {ROOT / 'app' / 'static'}/;",
        "proxy_read_timeout 60s;": f"proxy_read_timeout {read_timeout};",
        **(tuned or {}),  # after the DEPLOY: values, so it may change what they became
        "error_log /var/log/nginx/error.log crit;": f"error_log {log_dir}/error.log crit;",
    }
    # Both stream locations (location = /messages, and the one for query tokens) carry the read timeout.
    repeated = {"proxy_read_timeout 60s;": (f"proxy_read_timeout {read_timeout};", 2)}
    for old, (new, expected) in {**{old: (new, 1) for old, new in replacements.items()}, **repeated}.items():
        count = text.count(old)
        if count != expected:
            raise AssertionError(f"deploy/nginx.conf must contain {old!r} {expected} time(s), found {count}")
        text = text.replace(old, new)
    return text


class LiveNginx:
    """An nginx master in the foreground, with its config and logs in ``directory``."""

    def __init__(self, directory: Path, upstream_port: int, read_timeout: str = "60s",
                 tuned: dict[str, str] | None = None) -> None:
        self.directory = directory
        self.port = free_port()
        self.tls_port = free_port()
        self.certificate: SelfSigned | None = None
        self.upstream_port = upstream_port
        self.read_timeout = read_timeout
        self.tuned = tuned
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        """The HTTPS (and HTTP/2) listener; its certificate is ``self.certificate``, made by write_config."""
        return f"https://127.0.0.1:{self.tls_port}"

    @property
    def conf_path(self) -> Path:
        return self.directory / "nginx.conf"

    def write_config(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.certificate = make_self_signed(self.directory / "tls")
        (self.directory / "sse-rooms.conf").write_text(
            render_server_block(upstream_port=self.upstream_port, listen_port=self.port, tls_port=self.tls_port,
                                certificate=self.certificate, log_dir=self.directory,
                                read_timeout=self.read_timeout, tuned=self.tuned))
        # As root, nginx would run its worker as "nobody", which cannot enter
        # pytest's private temp folder; the test's own user can.
        user = f"user {getpass.getuser()};\n" if os.geteuid() == 0 else ""
        self.conf_path.write_text(_HTTP_WRAPPER.format(dir=self.directory, user=user))

    def _command(self, *extra: str) -> list[str]:
        return [str(NGINX), "-p", str(self.directory), "-c", str(self.conf_path),
                "-e", str(self.directory / "error.log"), *extra]

    def start(self, timeout: float = 10.0) -> LiveNginx:
        if not NGINX.is_file():
            raise RuntimeError(f"{NGINX} missing: install Debian's nginx (make system-deps, as root)")
        self.write_config()
        check = subprocess.run(self._command("-t"), capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t rejected the rendered config:\n{check.stderr}")
        self.process = subprocess.Popen(self._command("-g", "daemon off;"), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_until(self._listening, timeout)
        except AssertionError:
            raise RuntimeError(f"nginx did not listen on {self.port}: {self.log()}") from None
        return self

    def _listening(self) -> bool:
        """Say whether nginx accepts connections; fail at once if it exited."""
        if self.process.poll() is not None:
            raise RuntimeError(f"nginx exited with {self.process.returncode}: {self.log()}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        """Stop at once (SIGTERM is nginx's fast shutdown; open streams are not waited for)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""
