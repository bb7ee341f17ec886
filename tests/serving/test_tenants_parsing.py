"""The tenants file is read by a pydantic model: valid files give the tenants, a malformed one stops startup."""

from __future__ import annotations

import json

import pytest

from services.orchestrator.tenants import Tenant, TenantDirectory, hash_key


def _write(tmp_path, doc) -> object:
    path = tmp_path / "tenants.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def test_a_valid_file_gives_each_key_its_tenant(tmp_path):
    path = _write(tmp_path, {"tenants": [
        {"id": "acme", "api_key_sha256": hash_key("k1").upper(), "max_sessions": 8, "session_minutes": 6000,
         "max_uploads": 1, "max_avatars": 5, "max_avatar_mb": 0.5},
        {"id": 42, "api_key_sha256": hash_key("k2")},
    ]})
    directory = TenantDirectory.from_file(path)
    assert not directory.open_mode
    assert directory.authenticate([("x-api-key", "k1")]) == Tenant("acme", 8, 6000.0, 1, 5, 0.5)
    assert directory.authenticate([("authorization", "Bearer k2")]) == Tenant("42", 16, 0.0)


def test_no_file_is_open_mode():
    # one tenant with the default quotas, and all of the server's upload slots (max_uploads 0)
    assert TenantDirectory.from_file(None).authenticate(None) == Tenant("default", max_uploads=0)


@pytest.mark.parametrize(("doc", "field"), [
    ("{not json", "json"),
    ({"tenant": []}, "tenants"),
    ({"tenants": [{"api_key_sha256": "0" * 64}]}, "id"),
    ({"tenants": [{"id": "a", "api_key_sha256": "abc"}]}, "api_key_sha256"),
    ({"tenants": [{"id": "a", "api_key_sha256": "z" * 64}]}, "api_key_sha256"),
    ({"tenants": [{"id": "a", "api_key_sha256": "0" * 64, "max_sessions": "many"}]}, "max_sessions"),
    ({"tenants": [{"id": "a", "api_key_sha256": "0" * 64, "max_uploads": 0}]}, "max_uploads"),
    ({"tenants": [{"id": "a", "api_key_sha256": "0" * 64, "max_avatars": 0}]}, "max_avatars"),
    ({"tenants": [{"id": "a", "api_key_sha256": "0" * 64, "max_avatar_mb": -1}]}, "max_avatar_mb"),
])
def test_a_malformed_file_stops_startup_naming_the_file_and_field(tmp_path, doc, field):
    path = _write(tmp_path, doc)
    with pytest.raises(SystemExit, match=rf"cannot use tenants file {path}(.|\n)*{field}"):
        TenantDirectory.from_file(path)


def test_a_missing_file_stops_startup(tmp_path):
    with pytest.raises(SystemExit, match="cannot use tenants file"):
        TenantDirectory.from_file(tmp_path / "absent.json")
