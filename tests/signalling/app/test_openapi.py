"""The OpenAPI document: served, valid OpenAPI 3.1, and naming exactly the application's routes."""

from __future__ import annotations

import re
from typing import Any

from jsonschema import Draft202012Validator

from signalling.app import openapi
from signalling.app.factory import create_app
from signalling.core.settings import Settings

# Not REST: the WebSocket (docs/protocol.md) and the demo's pages and files.
NOT_REST = re.compile(r"^/(ws|client|expert|receipt|static.*)?$")


def routes(app: Any) -> set[tuple[str, str]]:
    found = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or info.get("prefix", "")
        if route.method == "HEAD" or NOT_REST.match(path):
            continue
        found.add((route.method.lower(), path))
    return found


def documented() -> set[tuple[str, str]]:
    methods = {"get", "put", "post", "delete", "patch", "options", "head"}
    return {(m, path) for path, item in openapi.document()["paths"].items() for m in item if m in methods}


def test_the_document_names_exactly_the_routes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = create_app(Settings(data_dir=tmp_path, media_loopback=True))  # loopback: the dev token route too
    assert routes(app) == documented()


def test_the_document_is_openapi_3_1_with_valid_schemas() -> None:
    doc = openapi.document()
    assert doc["openapi"] == "3.1.0"
    for name, schema in doc["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)
    # Every $ref resolves.
    text = str(doc)
    for ref in re.findall(r"#/components/(\w+)/(\w+)", text):
        assert ref[1] in doc["components"][ref[0]], ref
    # Every operation says what a caller may get, errors included.
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            assert op["responses"] and op["summary"], (method, path)
            if op["security"]:
                assert "401" in op["responses"], (method, path)


async def test_it_is_served(client) -> None:  # type: ignore[no-untyped-def]
    resp = await client.get("/api/openapi.json")
    assert resp.status == 200 and resp.content_type == "application/json"
    assert (await resp.json())["paths"].keys() == openapi.document()["paths"].keys()


async def test_unknown_api_paths_and_methods_answer_coded_json(client) -> None:  # type: ignore[no-untyped-def]
    resp = await client.get("/api/nothing-here")
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"
    resp = await client.post("/api/experts")
    assert resp.status == 405 and (await resp.json())["error"]["code"] == "method_not_allowed"
    resp = await client.post("/whip/bad%20id")
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"


def response_of(path: str, method: str, status: str) -> dict[str, Any]:
    found = openapi.document()["paths"][path][method]["responses"][status]
    if "$ref" in found:
        found = openapi.document()["components"]["responses"][found["$ref"].rsplit("/", 1)[1]]
    return dict(found)


async def test_a_request_line_over_the_parsers_limit_gets_a_documented_answer(client) -> None:  # type: ignore[no-untyped-def]
    # (schemathesis found it: a long enough query string is refused before any route runs)
    resp = await client.get("/api/experts", params={"q": "a" * 9000})
    assert resp.status == 400
    assert resp.content_type in response_of("/api/experts", "get", "400")["content"]
    resp = await client.get(f"/api/recordings/{'a' * 9000}")
    assert resp.status == 400
    assert resp.content_type in response_of("/api/recordings/{file_id}", "get", "400")["content"]


def test_readiness_with_workers_or_nodes_is_documented() -> None:
    # (the shapes signalling.app.factory's readyz answers with an SFU worker pool and as a signalling node)
    ready = Draft202012Validator(openapi.document()["components"]["schemas"]["Ready"])
    ready.validate({"status": "ready", "node": "n", "sfu_workers": [{"worker": 0, "up": True}, {"worker": 1, "up": False}]})
    ready.validate({"status": "not_ready", "reason": "no SFU node linked",
                    "sfu_nodes": [{"node": "sfu-a", "up": False, "draining": True}]})
