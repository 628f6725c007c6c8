"""The operator CLI's HTTP client for the cloud's API (``TETHER_URL``, ``TETHER_TOKEN``).

The cloud's certificate is verified against ``TETHER_CA`` (the platform CA file) when set, else
against the system trust store; verification is never turned off.

Every ID a command puts in an API path goes through :func:`api_path`, one percent-encoded
segment each: an ID is never read as a path, a query or a dot segment. Failures become
:class:`ApiError` with the cloud's own message (its ``{"error": ...}`` body) and the HTTP
status apart; no error text that could hold the ``Authorization`` header (the token) is shown.
:func:`decode` reads an answer as the struct a command shows (:mod:`tether.cli.answers`): an
answer of another shape is an :class:`UnexpectedAnswer`. :func:`api_command` wraps each command:
it says an :class:`ApiError` as one error line (a JSON object with ``--json``) and exits 1.
"""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar
from urllib.parse import quote

import httpx
import msgspec

from tether.cli.output import fail, json_errors

__all__ = [
    "API",
    "ApiClient",
    "ApiError",
    "UnexpectedAnswer",
    "api_command",
    "api_path",
    "client_from_env",
    "decode",
]

API = "/api/v1"

#: Longest error text from the cloud (or a proxy in front of it) shown to the operator.
_MAX_MESSAGE = 500

P = ParamSpec("P")
T = TypeVar("T")


class ApiError(Exception):
    """The API refused or could not be reached; *status* is the HTTP status, None if no answer."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class UnexpectedAnswer(ApiError):
    """The cloud answered, but not in the shape a command reads."""

    def __init__(self, problem: str) -> None:
        super().__init__(None, f"the cloud's answer has an unexpected shape ({problem})")


def decode(answer: Any, shape: type[T]) -> T:
    """*answer* (decoded JSON) as *shape*; :class:`UnexpectedAnswer` saying what does not fit."""
    try:
        return msgspec.convert(answer, shape)
    except msgspec.ValidationError as exc:
        raise UnexpectedAnswer(str(exc)) from None


def _segment(value: str) -> str:
    if not value:
        raise fail("an ID in the command line is empty", 2)
    encoded = quote(value, safe="")
    if encoded in (".", ".."):  # a dot segment would be resolved away, not sent
        encoded = encoded.replace(".", "%2E")
    return encoded


def api_path(*segments: str) -> str:
    """``/api/v1/SEG/SEG…``, each segment percent-encoded (``/``, ``?``, ``#``, ``..`` too)."""
    return API + "".join("/" + _segment(s) for s in segments)


def _error_text(response: httpx.Response) -> str:
    """The cloud's message from an error answer: ``{"error": ...}``, else its text."""
    message = ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        message = body["error"]
    elif body is None:
        message = response.text
        prefix = f"{response.status_code}:"  # aiohttp's plain "404: Not Found"
        if message.startswith(prefix):
            message = message[len(prefix) :]
    message = " ".join(message.split())
    if not message:
        message = response.reason_phrase or "error"
    if len(message) > _MAX_MESSAGE:
        message = message[:_MAX_MESSAGE] + "…"
    return message


@dataclass
class ApiClient:
    url: str
    token: str = field(repr=False)
    verify: ssl.SSLContext | bool = True
    timeout: float = 30.0

    def _client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url.rstrip("/"),
            headers={"Authorization": f"Bearer {self.token}"},
            verify=self.verify,
            timeout=self.timeout,
            trust_env=True,
        )

    def _said(self, exc: Exception) -> str:
        text = " ".join(str(exc).split()) or type(exc).__name__
        return text.replace(self.token, "<TETHER_TOKEN>")

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """httpx's failures as :class:`ApiError`, never with a header's value in them."""
        try:
            yield
        except httpx.ConnectError as exc:
            raise ApiError(None, f"cannot reach {self.url}: {self._said(exc)}") from None
        except httpx.TimeoutException:
            raise ApiError(None, f"no answer from {self.url} within {self.timeout:g} s") from None
        except httpx.LocalProtocolError:
            # h11 quotes the offending header, which may be the token: say nothing of it
            raise ApiError(None, f"could not send a valid request to {self.url}") from None
        except httpx.HTTPError as exc:
            raise ApiError(None, f"request to {self.url} failed: {self._said(exc)}") from None
        except httpx.InvalidURL:
            raise ApiError(None, f"TETHER_URL {self.url!r} is not a valid URL") from None

    def request(
        self, method: str, path: str, json: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        with self._translated(), self._client() as client:
            response = client.request(method, path, json=json, params=params)
        if response.status_code >= 400:
            raise ApiError(response.status_code, _error_text(response))
        try:
            return response.json()
        except ValueError:
            raise ApiError(response.status_code, "the cloud's answer is not JSON") from None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body if body is not None else {})

    @contextmanager
    def stream(self, path: str, params: dict[str, Any]) -> Iterator[httpx.Response]:
        """GET *path* and hand over the answer unread (after checking its status)."""
        with (
            self._translated(),
            self._client() as client,
            client.stream("GET", path, params=params) as response,
        ):
            if response.status_code >= 400:
                response.read()
                raise ApiError(response.status_code, _error_text(response))
            yield response


def _check_token(token: str) -> None:
    if any(not 0x20 < ord(c) < 0x7F for c in token if c.isascii()):
        raise fail(
            "TETHER_TOKEN contains a control character or space; "
            "set it to the token alone (no quotes, spaces or line ends)",
            2,
        )
    if not token.isascii():
        raise fail("TETHER_TOKEN contains a non-ASCII character; set it to the token alone", 2)


def _ssl_context(ca: str | None) -> ssl.SSLContext | bool:
    if not ca:
        return True
    try:
        return ssl.create_default_context(cafile=ca)
    except ssl.SSLError:
        raise fail(f"TETHER_CA={ca}: not a PEM file of CA certificates", 2) from None
    except OSError as exc:
        raise fail(f"TETHER_CA={ca}: {exc.strerror or exc}", 2) from None


def client_from_env() -> ApiClient:
    url = os.environ.get("TETHER_URL")
    token = os.environ.get("TETHER_TOKEN")
    if not url or not token:
        raise fail("set TETHER_URL and TETHER_TOKEN (the demo prints both)", 2)
    _check_token(token)
    return ApiClient(url=url, token=token, verify=_ssl_context(os.environ.get("TETHER_CA")))


def api_command(command: Callable[P, None]) -> Callable[P, None]:
    """Wrap an operator command: errors as ``--json`` asks, an API failure (an answer of an
    unexpected shape too) as one error line (exit 1), never a traceback."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        json_errors(bool(kwargs.get("as_json", False)))
        try:
            command(*args, **kwargs)
        except ApiError as exc:
            raise fail(exc.message, 1, exc.status) from None

    return run
