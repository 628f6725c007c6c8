"""The operator CLI's HTTP client for the cloud's API (``TETHER_URL``, ``TETHER_TOKEN``).

The cloud's certificate is verified against ``TETHER_CA`` (the platform CA file) when set, else
against the system trust store; verification is never turned off.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import httpx

from tether.cli.output import fail

__all__ = ["ApiClient", "ApiError", "client_from_env"]


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ApiClient:
    url: str
    token: str
    ca: str | None
    timeout: float = 30.0

    def _client(self) -> httpx.Client:
        verify: Any = True
        if self.ca:
            import ssl

            verify = ssl.create_default_context(cafile=self.ca)
        return httpx.Client(
            base_url=self.url.rstrip("/"),
            headers={"Authorization": f"Bearer {self.token}"},
            verify=verify,
            timeout=self.timeout,
            trust_env=True,
        )

    def request(
        self, method: str, path: str, json: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        try:
            with self._client() as client:
                response = client.request(method, path, json=json, params=params)
        except httpx.ConnectError as exc:
            raise ApiError(0, f"cannot reach {self.url}: {exc}") from None
        except httpx.HTTPError as exc:
            raise ApiError(0, f"request to {self.url} failed: {exc}") from None
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text.strip()
            raise ApiError(response.status_code, f"{response.status_code}: {message}")
        return response.json()

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body if body is not None else {})


def client_from_env() -> ApiClient:
    url = os.environ.get("TETHER_URL")
    token = os.environ.get("TETHER_TOKEN")
    if not url or not token:
        raise fail("set TETHER_URL and TETHER_TOKEN (the demo prints both)", 2)
    return ApiClient(url=url, token=token, ca=os.environ.get("TETHER_CA"))
