"""Secrets and authentication on real `ditto serve` processes: a Redis password never reaches a client, a log line
or the command line; Redis away is UNAVAILABLE on every call; a bad keys file stops the start; TLS on the public
port, with client certificates when configured. Certificates are made here, for loopback."""

from __future__ import annotations

import datetime
import ipaddress
import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from hardening_helpers import config, portrait_png
from redis_processes import ROOT, Orchestrator, PrivateRedis

from ditto_client import AvatarClient, tls_credentials
from ditto_client.v1 import avatar_pb2
from services.orchestrator.tenants import TenantDirectory

PASSWORD = "Sup3r-Secret-Redis-Pa55word"


def test_redis_password_never_reaches_clients_logs_or_argv(tmp_path):
    redis = PrivateRedis(password=PASSWORD)
    orch = None
    try:
        orch = Orchestrator(tmp_path / "orch.log", {"REDIS_URL": redis.url})
        assert PASSWORD not in orch.cmdline()
        redis.stop()  # Redis goes away under a running orchestrator
        with AvatarClient(orch.address) as client:
            calls = {
                "GetAvatar": lambda: client.stub.GetAvatar(avatar_pb2.GetAvatarRequest(avatar_id="a"), timeout=30),
                "DeleteAvatar": lambda: client.stub.DeleteAvatar(avatar_pb2.GetAvatarRequest(avatar_id="a"),
                                                                 timeout=30),
                # a real picture: the media is checked (and normalised) before the avatar store is reached
                "RegisterAvatar": lambda: client.stub.RegisterAvatar(
                    avatar_pb2.RegisterAvatarRequest(media=portrait_png(), filename="p.png"), timeout=30),
                "Converse": lambda: list(client.stub.Converse(iter([avatar_pb2.ConverseRequest(
                    config=config("a"))]), timeout=30)),
            }
            for name, call in calls.items():
                with pytest.raises(grpc.RpcError) as info:
                    call()
                err = info.value
                assert err.code() == grpc.StatusCode.UNAVAILABLE, f"{name}: {err.code()} {err.details()}"
                assert PASSWORD not in (err.details() or ""), f"{name} sent the Redis password to the client"
                assert "Redis" in (err.details() or "") and "retry" in (err.details() or ""), err.details()
    finally:
        if orch:
            orch.kill(15)
        redis.stop()
    log = (tmp_path / "orch.log").read_text()
    assert "***@" in log, "the log never names Redis: the test proves nothing"
    assert PASSWORD not in log, "the Redis password is in the log"


def test_an_empty_keys_file_stops_the_start_with_a_clear_error(tmp_path, redis_url, unique_prefix):
    keys = tmp_path / "tenants.json"
    keys.write_text(json.dumps({"tenants": []}))
    with pytest.raises(RuntimeError) as info:
        Orchestrator(tmp_path / "orch.log", {"REDIS_URL": redis_url, "DITTO_BUS__PREFIX": unique_prefix,
                                             "DITTO_API_KEYS_FILE": str(keys)})
    assert "tenants file" in str(info.value) and "empty" in str(info.value) and "open" in str(info.value)


@pytest.mark.parametrize("content, reason", [
    ("{}", "tenants"),
    ("not json", "Invalid JSON"),
    (json.dumps({"tenants": [{"id": "a", "api_key_sha256": "zz"}]}), "64 hex"),
    (json.dumps({"tenants": [{"id": "a", "api_key_sha256": "0" * 64}, {"id": "b", "api_key_sha256": "0" * 64}]}),
     "duplicate"),
])
def test_an_invalid_keys_file_is_refused(tmp_path, content, reason):
    keys = tmp_path / "tenants.json"
    keys.write_text(content)
    with pytest.raises(SystemExit) as info:
        TenantDirectory.from_file(keys)
    assert reason in str(info.value.code) and str(keys) in str(info.value.code)
    assert TenantDirectory.from_file(None).open_mode  # no file configured: the only open mode


# ---- TLS ----

def _pki(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost, a client certificate from the CA and one from nobody."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(subject: str, key, issuer: str, issuer_key, ca: bool = False, server: bool = False):
        b = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                             x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                critical=False)
            b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        elif not ca:
            b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    out: dict[str, Path] = {}

    def write(label: str, c, key) -> None:
        out[f"{label}.crt"] = folder / f"{label}.crt"
        out[f"{label}.crt"].write_bytes(c.public_bytes(serialization.Encoding.PEM))
        out[f"{label}.key"] = folder / f"{label}.key"
        out[f"{label}.key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))

    ca_key, server_key, client_key, rogue_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    write("ca", cert("ditto test CA", ca_key, "ditto test CA", ca_key, ca=True), ca_key)
    write("server", cert("localhost", server_key, "ditto test CA", ca_key, server=True), server_key)
    write("client", cert("tenant-acme", client_key, "ditto test CA", ca_key), client_key)
    write("rogue", cert("rogue", rogue_key, "rogue", rogue_key), rogue_key)
    return out


def _get_avatar(client: AvatarClient) -> grpc.StatusCode:
    try:
        client.stub.GetAvatar(avatar_pb2.GetAvatarRequest(avatar_id="nope"), timeout=20)
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def test_tls_on_the_public_port_with_optional_client_certificates(tmp_path, redis_url, unique_prefix):
    pki = _pki(tmp_path)
    env = {"REDIS_URL": redis_url, "DITTO_BUS__PREFIX": unique_prefix,
           "DITTO_TLS__CERT_FILE": str(pki["server.crt"]), "DITTO_TLS__KEY_FILE": str(pki["server.key"])}
    orch = Orchestrator(tmp_path / "tls.log", env)
    try:
        with AvatarClient(orch.address, credentials=tls_credentials(root_cert=pki["ca.crt"])) as client:
            assert _get_avatar(client) == grpc.StatusCode.NOT_FOUND  # the call went through, encrypted
        with AvatarClient(orch.address) as plaintext:
            assert _get_avatar(plaintext) == grpc.StatusCode.UNAVAILABLE
    finally:
        orch.kill(15)
    orch = Orchestrator(tmp_path / "mtls.log", {**env, "DITTO_TLS__CLIENT_CA_FILE": str(pki["ca.crt"])})
    try:
        with AvatarClient(orch.address, credentials=tls_credentials(root_cert=pki["ca.crt"])) as no_cert:
            assert _get_avatar(no_cert) == grpc.StatusCode.UNAVAILABLE
        with AvatarClient(orch.address, credentials=tls_credentials(
                pki["ca.crt"], client_cert=pki["rogue.crt"], client_key=pki["rogue.key"])) as rogue:
            assert _get_avatar(rogue) == grpc.StatusCode.UNAVAILABLE
        with AvatarClient(orch.address, credentials=tls_credentials(
                pki["ca.crt"], client_cert=pki["client.crt"], client_key=pki["client.key"])) as client:
            assert _get_avatar(client) == grpc.StatusCode.NOT_FOUND
    finally:
        orch.kill(15)


def test_incomplete_tls_settings_stop_the_start(tmp_path):
    pki = _pki(tmp_path)
    import os

    env = dict(os.environ, DITTO_TLS__CERT_FILE=str(pki["server.crt"]), DITTO_BUS__KIND="redis",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "clients" / "python")]))
    res = subprocess.run([sys.executable, "-m", "ditto_app.cli", "serve", "--port", "0"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "DITTO_TLS" in res.stderr and "key_file" in res.stderr, res.stderr[-2000:]
