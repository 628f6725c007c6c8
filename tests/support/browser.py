"""A running ``tether demo`` and Debian's Chromium for browser tests (Playwright, sync API).

    with running_demo(tmp_path) as demo:
        browser = playwright.chromium.launch(**chromium_launch(demo))
        page = browser.new_page()
        log_in(page, demo, "admin", demo.admin_password)

The browser is never told to ignore certificate errors: it is started with
``--ignore-certificate-errors-spki-list`` naming the SHA-256 of the cloud's server key, which
accepts that one key (verification pinned to it) and nothing else. No browser is downloaded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from playwright.sync_api import Page

from tether.cloud.accounts import ADMIN_PASSWORD_FILE
from tether.cloud.app import ADMIN_TOKEN_FILE
from tether.pki.ca import spki_sha256

from .cloudproc import free_port, tether_script

__all__ = [
    "ARTIFACTS",
    "CHROMIUM",
    "LAPTOP",
    "PHONE",
    "Demo",
    "chromium_launch",
    "console_errors",
    "log_in",
    "running_demo",
    "screenshot",
]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
START_TIMEOUT = 90.0
LAPTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}


@dataclass(frozen=True)
class Demo:
    url: str
    data_dir: Path
    log: Path

    @property
    def cloud_dir(self) -> Path:
        return self.data_dir / "cloud"

    @property
    def ca_path(self) -> Path:
        return self.cloud_dir / "pki" / "ca.pem"

    @property
    def admin_password(self) -> str:
        return (self.cloud_dir / ADMIN_PASSWORD_FILE).read_text().strip()

    @property
    def admin_token(self) -> str:
        return (self.cloud_dir / ADMIN_TOKEN_FILE).read_text().strip()

    def cli_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env.update(
            TETHER_URL=self.url,
            TETHER_TOKEN=self.admin_token,
            TETHER_CA=str(self.ca_path),
            COLUMNS="200",
        )
        return env


def _env_value(env_file: Path, name: str) -> str | None:
    for line in env_file.read_text().splitlines():
        if line.startswith(f"export {name}="):
            return line.split("=", 1)[1]
    return None


@contextlib.contextmanager
def running_demo(root: Path) -> Iterator[Demo]:
    """``tether demo --gateways 2`` as people run it, stopped (SIGTERM) when the block ends."""
    data_dir, log = root / "data", root / "demo.log"
    env = {k: v for k, v in os.environ.items() if k != "TETHER_DATABASE_URL"}
    env = {k: v for k, v in env.items() if not k.lower().endswith("_proxy")}
    argv = [str(tether_script()), "demo", "--gateways", "2", "--data-dir", str(data_dir)]
    argv += ["--port", str(free_port())]
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    try:
        env_file = data_dir / "env.sh"
        deadline = time.monotonic() + START_TIMEOUT
        while not (env_file.exists() and "demo is running" in log.read_text(errors="replace")):
            if process.poll() is not None:
                pytest.fail(f"tether demo exited ({process.returncode}):\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"tether demo not ready in {START_TIMEOUT:.0f} s:\n{log.read_text()}")
            time.sleep(0.2)  # polling a file another process writes; bounded by the deadline
        url = _env_value(env_file, "TETHER_URL")
        assert url is not None
        yield Demo(url=url, data_dir=data_dir, log=log)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


def chromium_launch(demo: Demo) -> dict[str, Any]:
    """Arguments of ``chromium.launch``: Debian's Chromium, headless, trusting the demo
    cloud's server key and nothing else."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} not found: install Debian's chromium (scripts/sysdeps.sh)", pytrace=False
        )
    cert = x509.load_pem_x509_certificate((demo.cloud_dir / "pki" / "server.pem").read_bytes())
    return {
        "executable_path": str(CHROMIUM),
        "args": [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--ignore-certificate-errors-spki-list={spki_sha256(cert)}",
        ],
    }


def screenshot(page: Page, artifacts: Path, name: str) -> Path:
    """Keep a full-page screenshot of *page* as ``test-artifacts/console/NAME.png``."""
    path = artifacts / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 0
    return path


def console_errors(page: Page) -> list[str]:
    """A list that fills with the page's script errors and console errors (CSP refusals
    included) from now on."""
    seen: list[str] = []
    page.on("pageerror", lambda error: seen.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: (
            seen.append(f"console {message.type}: {message.text}")
            if message.type == "error"
            else None
        ),
    )
    return seen


def log_in(page: Page, demo: Demo, username: str, password: str) -> None:
    page.goto(demo.url + "/console/")
    page.wait_for_url("**/console/login**")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("form.stack button[type=submit]")
    page.wait_for_url(demo.url + "/console/")
