"""A real Label Studio server for the live tests: started from .venv-ls on a free port with a temporary
data dir, an admin with a session-made personal access token, annotator users; stopped with its
process group.

Nothing here imports label-studio (it lives in its own venv) or the SDK at module load.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LS_BIN = Path(os.environ.get("CHATSMITH_LABEL_STUDIO_BIN", REPO / ".venv-ls" / "bin" / "label-studio"))
LS_VERSION = "1.23.2"
START_TIMEOUT_S = float(os.environ.get("CHATSMITH_LABEL_STUDIO_START_TIMEOUT", "270"))
ADMIN_EMAIL, ADMIN_PASSWORD = "admin@chatsmith.test", "chatsmith-admin-pw"
LEGACY_TOKEN = "chatsmithlegacytoken0123456789"  # the admin's legacy token: 1.23 refuses it by default
# variables label-studio reads (with or without a LABEL_STUDIO_ / HEARTEX_ prefix) that must not leak in
_SCRUB = ("USERNAME", "PASSWORD", "USER_TOKEN", "HOST", "PORT", "DATABASE_NAME", "DJANGO_DB", "DJANGO_SETTINGS_MODULE")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(data_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LABEL_STUDIO_", "HEARTEX_")) and k not in _SCRUB}
    env.update({"LABEL_STUDIO_BASE_DATA_DIR": str(data_dir), "LATEST_VERSION_CHECK": "false",
                "COLLECT_ANALYTICS": "false", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "", "PYTHONUNBUFFERED": "1"})
    return env


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path
    started_s: float
    token: str = ""  # the admin's personal access token (a JWT refresh token)
    annotators: list[int] = field(default_factory=list)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=20)


def start(root: Path) -> Server:
    """Start `label-studio start` and wait for GET /health; raises RuntimeError (with the log) when it
    does not come up within START_TIMEOUT_S."""
    if not LS_BIN.is_file():
        raise RuntimeError(f"{LS_BIN} not found: `make test-label-studio` builds .venv-ls (label-studio=={LS_VERSION})")
    data, log = root / "ls-data", root / "label-studio.log"
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [str(LS_BIN), "start", "--no-browser", "--port", str(port), "--internal-host", "127.0.0.1",
               "--data-dir", str(data), "--username", ADMIN_EMAIL, "--password", ADMIN_PASSWORD,
               "--user-token", LEGACY_TOKEN, "--log-level", "WARNING"]
    begin = time.monotonic()
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=_env(data), cwd=root, start_new_session=True)
    server = Server(url=f"http://127.0.0.1:{port}", process=process, log=log, started_s=0.0)
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"label-studio exited with {process.returncode} before answering /health:\n{server.log_tail()}")
            if time.monotonic() - begin > START_TIMEOUT_S:
                raise RuntimeError(f"label-studio did not answer /health within {START_TIMEOUT_S:.0f} s:\n{server.log_tail()}")
            try:
                with urllib.request.urlopen(server.url + "/health", timeout=5) as answer:
                    if json.loads(answer.read()).get("status") == "UP":
                        break
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(2)
    except BaseException:
        server.stop()
        raise
    server.started_s = time.monotonic() - begin
    return server


def personal_access_token(url: str, email: str = ADMIN_EMAIL, password: str = ADMIN_PASSWORD) -> str:
    """Log in with a session (CSRF) and create a personal access token: POST /api/token/."""
    import requests

    session = requests.Session()
    session.get(url + "/user/login/", timeout=30).raise_for_status()
    answer = session.post(url + "/user/login/", timeout=60, allow_redirects=False,
                          data={"email": email, "password": password, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
                          headers={"Referer": url + "/user/login/"})
    assert answer.status_code == 302, f"login as {email} failed: {answer.status_code} {answer.text[:300]}"
    answer = session.post(url + "/api/token/", timeout=60,
                          headers={"X-CSRFToken": session.cookies["csrftoken"], "Referer": url + "/"})
    assert answer.status_code == 201, f"POST /api/token/: {answer.status_code} {answer.text[:300]}"
    return answer.json()["token"]


def access_token(url: str, refresh: str) -> str:
    import requests

    answer = requests.post(url + "/api/token/refresh/", json={"refresh": refresh}, timeout=60)
    answer.raise_for_status()
    return answer.json()["access"]
