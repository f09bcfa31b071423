"""PostgreSQL over TLS as deploy/README.md documents it: a database URL ending in
`?ssl=verify-full` and the CA in PGSSLROOTCERT. Checked where asyncpg decides, for both ways the
services connect: SQLAlchemy engines and the plain asyncpg connections (outbox LISTEN, replay)."""

from __future__ import annotations

import datetime
import inspect
import ssl
from pathlib import Path
from typing import Any

import pytest
from asyncpg import connect_utils
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import make_url
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg

from shared.db import asyncpg_dsn

URL = "postgresql+asyncpg://crm_profile:secret@db.example.com:5432/crm_profile?ssl=verify-full"


@pytest.fixture
def ca_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crm test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "ca.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    monkeypatch.setenv("PGSSLROOTCERT", str(path))
    return path


def parse(**given: Any) -> Any:
    """asyncpg's own reading of connection arguments (what connect() would use)."""
    names = inspect.signature(connect_utils._parse_connect_dsn_and_args).parameters
    arguments = {name: given.get(name) for name in names}
    _, params = connect_utils._parse_connect_dsn_and_args(**arguments)
    return params


def assert_verifies_against(params: Any, ca_file: Path) -> None:
    context = params.ssl
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert any("crm test CA" in str(c.get("subject")) for c in context.get_ca_certs()), ca_file
    assert "ssl" not in (params.server_settings or {}), "ssl must not reach the server as a setting"


def test_sqlalchemy_engines_verify_the_server_against_the_ca(ca_file: Path) -> None:
    _, kwargs = PGDialect_asyncpg().create_connect_args(make_url(URL))
    assert kwargs["ssl"] == "verify-full"
    assert_verifies_against(
        parse(
            dsn=None,
            host=kwargs["host"],
            port=kwargs["port"],
            user=kwargs["user"],
            password=kwargs["password"],
            database=kwargs["database"],
            ssl=kwargs["ssl"],
        ),
        ca_file,
    )


def test_plain_asyncpg_connections_verify_the_server_against_the_ca(ca_file: Path) -> None:
    """The outbox relay's LISTEN connection and `crm replay` connect with shared.db.asyncpg_dsn."""
    assert_verifies_against(parse(dsn=asyncpg_dsn(URL)), ca_file)
