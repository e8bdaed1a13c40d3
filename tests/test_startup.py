"""Start-up is clean: the gunicorn master leaves ssl for the gevent worker to patch, and nothing warns."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.live import ROOT

# What gunicorn's master does before it forks a gevent worker, then what the worker
# does first: gunicorn.conf.py is read as gunicorn reads it, the master's own hooks
# run (on_starting; child_exit, as after a worker was killed: the next worker is
# forked from this master), the worker's post_fork runs (before the patch, as in
# gunicorn), and then gevent patches, with warnings recorded.
MASTER_THEN_WORKER = """
import importlib.util, json, sys, types, warnings

import gunicorn.app.wsgiapp  # noqa: F401 (the master's own imports)
from gunicorn.workers import ggevent  # noqa: F401 (worker_class is loaded in the master)

spec = importlib.util.spec_from_file_location("__config__", "gunicorn.conf.py")
config = importlib.util.module_from_spec(spec)
sys.modules["__config__"] = config
spec.loader.exec_module(config)
config.on_starting(None)
config.child_exit(None, types.SimpleNamespace(pid=2**22 + 1))
import logging
config.post_fork(types.SimpleNamespace(log=types.SimpleNamespace(error_log=logging.getLogger("gunicorn.error"))),
                 types.SimpleNamespace(handle_quit=lambda signum, frame: None))
in_master = sorted(name for name in sys.modules
                   if name == "app.factory" or name.split(".")[0] in {"flask", "werkzeug", "jwt", "pymongo"})

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from gevent import monkey
    monkey.patch_all()
print(json.dumps({"in_master": in_master, "warnings": [f"{w.category.__name__}: {w.message}" for w in caught]}))
"""


def _public_key_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.mark.parametrize("env", [
    {},
    # Every setting whose check imports a library in the master (limits, cryptography).
    {"MONGODB_URI": "mongodb://127.0.0.1:9/?tls=true", "PUBLISH_RATE": "20/second",
     "AUTH_JWT_PUBLIC_KEY": "PEM", "PUBLIC_ROOMS": "lobby"},
], ids=["defaults", "every-checked-setting"])
def test_gunicorn_master_imports_nothing_the_gevent_worker_cannot_patch(tmp_path, env):
    """The master imported the app (ssl through PyJWT) before the worker patched: TLS to MongoDB failed (issue 18)."""
    env = {**env, "AUTH_JWT_PUBLIC_KEY": _public_key_pem()} if "AUTH_JWT_PUBLIC_KEY" in env else env
    result = subprocess.run([sys.executable, "-c", MASTER_THEN_WORKER], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, env={"PATH": "/usr/bin:/bin", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
                                             **env})
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen["warnings"] == []
    # Not the app's factory, its web framework or its clients: the worker imports them, after the patch.
    assert seen["in_master"] == []


def test_installing_the_project_for_development_prints_no_warning(tmp_path):
    """`make install` (pip install -e .) printed setuptools' warning wall about a package named `app` (issue 18)."""
    import shutil

    project = tmp_path / "project"  # a copy: the build writes its metadata beside the sources
    shutil.copytree(ROOT / "app", project / "app", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    (tmp_path / "wheel").mkdir()
    # What pip runs for `pip install --no-build-isolation -e .`; every warning shown, once each.
    build = f"from setuptools import build_meta; build_meta.build_editable({str(tmp_path / 'wheel')!r})"
    result = subprocess.run([sys.executable, "-W", "always", "-c", build],
                            cwd=project, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    # A warning prints as "file:line: Category: message" (setuptools' wall was InformationOnly).
    assert not re.search(r"\.py:\d+: \w+: ", result.stderr), result.stderr
    assert [path.name for path in (tmp_path / "wheel").iterdir()] == ["sse_rooms-0.1.0-0.editable-py3-none-any.whl"]
