"""The operator API's OpenAPI document, served by a running cloud, matches its routes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from tests.support.cloudproc import Cloud

from tether.cloud.api import ROUTES


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for raw in ref[2:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict), ref
        assert part in node, f"{ref} does not resolve ({part!r} missing)"
        node = node[part]
    return node


async def test_openapi_document_describes_every_route(cloud: Cloud) -> None:
    async with cloud.api(auth=False) as anonymous:
        response = await anonymous.get("/api/v1/openapi.json")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/json")
        document = response.json()

        assert document["openapi"].startswith("3.1")
        assert document["info"]["title"]
        assert document["info"]["version"]
        assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        paths = document["paths"]
        assert len(ROUTES) >= 10
        for route in ROUTES:
            assert route.path in paths, route.path
            op = paths[route.path].get(route.method.lower())
            assert op is not None, f"{route.method} {route.path} missing"
            assert op["x-tether-permission"] == route.permission
            assert op["security"] == [{"bearer": []}]
            errors = {code for code in op["responses"] if code.startswith(("4", "5"))}
            assert {"400", "401", "403", "404", "500"} <= errors
            assert ("409" in errors) is (route.method != "GET"), route.path
            assert ("413" in errors) is (route.request is not None), route.path
            success = op["responses"][str(route.status)]
            schema = success["content"]["application/json"]["schema"]
            assert schema, f"{route.method} {route.path}: empty response schema"
            for ref in _refs(schema):
                _resolve(document, ref)
            declared = {p["name"] for p in op["parameters"] if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", route.path))
            if route.request is not None:
                body = op["requestBody"]["content"]["application/json"]["schema"]
                for ref in _refs(body):
                    _resolve(document, ref)
            # The server has the route too: without a token it answers 401, not 404/405.
            concrete = re.sub(r"{\w+}", "x", route.path)
            answer = await anonymous.request(route.method, concrete)
            assert answer.status_code == 401, (route.method, concrete, answer.status_code)

        # Nothing documented that the table does not have, and every reference resolves.
        documented = {(m.upper(), p) for p, ops in paths.items() for m in ops}
        assert documented == {(r.method, r.path) for r in ROUTES}
        for ref in _refs(document):
            _resolve(document, ref)
        for name, schema in document["components"]["schemas"].items():
            assert isinstance(schema, dict), name
            assert "type" in schema or "anyOf" in schema or "$ref" in schema or "enum" in schema
