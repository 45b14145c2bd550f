"""The service's token by default and its TLS: a service started without a token makes one in a user-only file that
local clients read; no token is a loopback-only opt-out; a token never goes to a non-loopback address in clear
(the service refuses such a bind without TLS, the client such a URL); ``tcps://`` with a certificate made here.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import socket
import stat
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import dfa_client
import opu_driver
from dfa_client import wire
from dfa_client.errors import AuthenticationError, ConnectionFailedError, InvalidInputError
from dfa_client.remote import _resolve_token
from dfa_client.security import TOKEN_FILE_ENV, load_or_create_token, read_token_file
from dfa_client.wire import MessageType, WireLimits
from opu_driver.errors import ConfigurationError
from opu_driver.service import OpuService
from tests.support import small_sim

URL = small_sim("noise=0&seed=5")
NEVER_OPENED = "sim://?this-url-is-never-opened"
N_FEATURES = 40
WAIT_S = 10.0


@pytest.fixture
def token_path(tmp_path, monkeypatch) -> Path:
    """A default token file of this test's own (not yet made)."""
    path = tmp_path / "runtime" / "opu-driver" / "service-token"
    monkeypatch.setenv(TOKEN_FILE_ENV, str(path))
    return path


def tcp(svc: OpuService, scheme: str = "tcp") -> str:
    host, port = svc.address
    return f"{scheme}://{host}:{port}"


def raw_hello(svc: OpuService, token: object) -> wire.Message:
    with socket.create_connection(svc.address, timeout=5) as sock:
        header = {
            "protocol_version": 1,
            "token": token,
            "n_components": 10,
            "n_features": N_FEATURES,
            "scheme": "four_frame",
            "n_bits": None,
            "max_batch": 8,
        }
        wire.send_message(sock, MessageType.HELLO, 0, header)
        return wire.read_message(sock, WireLimits(), time.monotonic() + 5)


# ------------------------------------------------------------------------------------------------ the token file
@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_a_service_without_a_token_makes_one_in_a_user_only_file_that_local_clients_read(token_path) -> None:
    with OpuService(URL) as svc:
        assert svc.token_file == token_path
        assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(token_path.parent.stat().st_mode) == 0o700
        token = token_path.read_text().strip()
        assert len(token) >= 40  # 32 random bytes, URL-safe
        assert raw_hello(svc, None).header["kind"] == "AuthenticationError"  # a token is needed, even on loopback
        with pytest.raises(AuthenticationError):
            dfa_client.connect(tcp(svc), n_components=10, token="not-it")
        with dfa_client.connect(tcp(svc), n_components=10) as projector:  # found in the file
            assert projector.project(np.ones(N_FEATURES)).shape == (10,)
        assert raw_hello(svc, token).type is MessageType.WELCOME
        assert token not in repr(svc.stats())
    with OpuService(URL) as again:  # the next start keeps the token
        assert token_path.read_text().strip() == token
        assert raw_hello(again, token).type is MessageType.WELCOME
    assert list(token_path.parent.iterdir()) == [token_path]  # no temporary file left behind


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_a_token_file_other_users_can_read_is_refused_before_the_device_opens(token_path) -> None:
    token_path.parent.mkdir(parents=True)
    token_path.write_text("a-shared-secret\n")
    token_path.chmod(0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        OpuService(NEVER_OPENED).start()
    with pytest.raises(InvalidInputError, match="chmod 600"):
        dfa_client.connect("tcp://127.0.0.1:9", n_components=10)
    token_path.chmod(0o600)
    assert read_token_file(token_path) == "a-shared-secret"
    token_path.write_text("   \n")
    with pytest.raises(ConfigurationError, match="empty"):
        OpuService(NEVER_OPENED).start()


def test_two_services_starting_at_once_share_one_token(tmp_path) -> None:
    path = tmp_path / "token"
    first, created = load_or_create_token(path)
    second, created_again = load_or_create_token(path)
    assert created and not created_again and first == second


def test_no_token_is_an_explicit_loopback_only_opt_out(token_path) -> None:
    with OpuService(URL, token="") as svc:
        assert svc.token_file is None and not token_path.exists()  # nothing made
        assert raw_hello(svc, None).type is MessageType.WELCOME
        with dfa_client.connect(tcp(svc), n_components=10, token="") as projector:
            assert projector.project(np.ones(N_FEATURES)).shape == (10,)
    with pytest.raises(ConfigurationError, match="needs a token"):
        OpuService(NEVER_OPENED, bind=("0.0.0.0", 0), token="", allow_cleartext=True)


def test_a_token_never_goes_to_a_remote_address_in_clear_nor_unasked() -> None:
    remote = "192.0.2.1"  # TEST-NET-1: never reached, the refusals come first
    with pytest.raises(InvalidInputError, match="in clear"):
        dfa_client.connect(f"tcp://{remote}:5000", n_components=10, token="secret")
    with pytest.raises(InvalidInputError, match="in clear"):
        dfa_client.connect(f"tcp://{remote}:5000?token=secret", n_components=10)
    # the local service's token file is read for a loopback address only
    load_or_create_token(Path(os.environ[TOKEN_FILE_ENV]))
    assert _resolve_token(remote, None, None) is None
    assert _resolve_token("127.0.0.1", None, None) == read_token_file(Path(os.environ[TOKEN_FILE_ENV]))
    assert _resolve_token("localhost", "", None) is None  # "" sends none


# ------------------------------------------------------------------------------------------------ TLS
def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1 and its key, made with the ``cryptography`` package
    if installed, else the system's ``openssl``."""
    cert, key = directory / "service-cert.pem", directory / "service-key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("making a test certificate needs the cryptography package or the openssl command")
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )  # fmt: skip
        return cert, key
    private_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private_key, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key.chmod(0o600)
    return cert, key


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    return _self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_service(certificate):
    cert, key = certificate
    with OpuService(URL, tls_cert=cert, tls_key=key, hello_timeout_s=0.5) as svc:
        yield svc


def test_tcps_serves_exact_results_with_the_certificate_verified(tls_service, certificate) -> None:
    cert, _ = certificate
    E = np.random.default_rng(9).normal(size=(3, N_FEATURES))
    with opu_driver.open(URL) as direct:
        expected = direct.linear_transform(E, 10)
    assert tls_service.tls
    with dfa_client.connect(tcp(tls_service, "tcps"), n_components=10, ca_file=cert) as projector:
        np.testing.assert_array_equal(projector.project(E), expected)
        np.testing.assert_array_equal(projector.project(E), expected)  # the same TLS connection goes on
        assert projector.reconnects == 0
    host, port = tls_service.address
    with dfa_client.connect(f"tcps://localhost:{port}", n_components=10, ca_file=cert) as projector:
        np.testing.assert_array_equal(projector.project(E), expected)  # by name: the certificate names it too


def test_tcps_refuses_a_certificate_it_cannot_verify_at_once(tls_service) -> None:
    started = time.monotonic()
    with pytest.raises(ConnectionFailedError, match="TLS"):
        dfa_client.connect(tcp(tls_service, "tcps"), n_components=10, retries=3, backoff_s=1.0)  # system CAs
    assert time.monotonic() - started < 1.0  # no retries: another try cannot cure a certificate
    with pytest.raises(InvalidInputError, match="tcps"):
        dfa_client.connect(tcp(tls_service), n_components=10, ca_file="/nonexistent.pem")


def test_plain_tcp_to_a_tls_service_and_silence_are_closed(tls_service) -> None:
    before = tls_service.stats().protocol_errors
    with pytest.raises(ConnectionFailedError):
        dfa_client.connect(tcp(tls_service), n_components=10, retries=0, timeout_s=5)
    with socket.create_connection(tls_service.address, timeout=5) as silent:
        silent.settimeout(WAIT_S)
        assert silent.recv(100) == b""  # the TLS handshake's deadline: hello_timeout_s
    assert tls_service.stats().protocol_errors >= before + 2


def test_a_tls_client_that_resets_abandons_its_request(tls_service, certificate) -> None:
    from dfa_client.security import client_tls_context

    cert, _ = certificate
    before = tls_service.stats()
    raw = socket.create_connection(tls_service.address, timeout=5)
    sock = client_tls_context(cert).wrap_socket(raw, server_hostname="127.0.0.1")
    from tests.support import service_token

    hello = {
        "protocol_version": 1,
        "token": service_token(),
        "n_components": 10,
        "n_features": N_FEATURES,
        "scheme": "four_frame",
        "n_bits": None,
        "max_batch": 8,
    }
    wire.send_message(sock, MessageType.HELLO, 0, hello)
    assert wire.read_message(sock, WireLimits(), time.monotonic() + 5).type is MessageType.WELCOME
    tls_service.pause()
    try:
        wire.send_message(sock, MessageType.PROJECT, 1, None, np.ones((2, N_FEATURES)))
        deadline = time.monotonic() + WAIT_S
        while tls_service.pending != 1:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        while tls_service.stats().requests_abandoned != before.requests_abandoned + 1:
            assert time.monotonic() < deadline
            time.sleep(0.005)
    finally:
        tls_service.resume()
    time.sleep(0.1)
    assert tls_service.stats().device_calls == before.device_calls


def test_a_non_loopback_bind_takes_tls_and_the_cli_keeps_the_rules(certificate) -> None:
    from opu_tools.cli import main

    cert, key = certificate
    service = OpuService(NEVER_OPENED, bind=("0.0.0.0", 0), tls_cert=cert, tls_key=key)  # allowed (not started)
    assert service.tls
    with pytest.raises(ConfigurationError, match="tls_cert"):
        OpuService(NEVER_OPENED, tls_key=key)
    with pytest.raises(ConfigurationError, match="cannot load"):
        OpuService(NEVER_OPENED, tls_cert=key, tls_key=cert)
    # refused before the device opens: status 2
    assert main(["serve", "--url", NEVER_OPENED, "--bind", "0.0.0.0:0"]) == 2
    assert main(["serve", "--url", NEVER_OPENED, "--bind", "0.0.0.0:0", "--no-token", "--allow-cleartext"]) == 2
    assert main(["serve", "--url", NEVER_OPENED, "--token", "t", "--no-token"]) == 2
    assert main(["serve", "--url", NEVER_OPENED, "--tls-key", str(key)]) == 2
