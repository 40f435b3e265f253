"""docs/openapi.json is a valid OpenAPI 3.1 document, and this client has a method for every
operation in it (imserver/tests/openapi.rs checks the document against the node's methods)."""

from __future__ import annotations

import json

from openapi_spec_validator import validate

from conftest import REPO
from imserver_client import Client

DOCUMENT = REPO / "docs" / "openapi.json"


def test_the_document_is_valid_openapi_3_1() -> None:
    document = json.loads(DOCUMENT.read_text())
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_the_client_has_a_method_for_every_documented_operation() -> None:
    document = json.loads(DOCUMENT.read_text())
    operations = {item["post"]["operationId"] for item in document["paths"].values()}
    assert operations == {path.rsplit("/", 1)[1] for path in document["paths"]}
    missing = sorted(op for op in operations if not callable(getattr(Client, op, None)))
    assert not missing, f"documented but without a Client method: {missing}"
