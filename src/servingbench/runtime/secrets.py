"""Per-run credentials: an API token and a private CA with server and client certificates.

Everything lives in a private temporary directory (``servingbench-secrets-*``: 0700, keys 0600, with the harness's
owner file so that ``servingbench cleanup`` removes it once a killed harness cannot) that is removed at the end of
the run; nothing here is ever written into results or reports (the results writer redacts the token as a last line
of defence).  Secrets reach servers through files and environment variables -- except Triton's admin key, which
tritonserver reads only from its command line (see adapters/tritonserver.py).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets as _secrets
import shutil
import tempfile
from pathlib import Path

from servingbench.contract import Secrets


def _write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_certificates(directory: Path, days: int = 1) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, all signed by the CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    not_after = now + dt.timedelta(days=days)

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def pem_key(k) -> bytes:
        return k.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    ca_key = key()
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("servingbench per-run CA"))
        .issuer_name(name("servingbench per-run CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, usage, san: bool):
        k = key()
        b = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca.subject)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if san:
            b = b.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return k, b.sign(ca_key, hashes.SHA256())

    srv_key, srv = leaf("localhost", ExtendedKeyUsageOID.SERVER_AUTH, san=True)
    cli_key, cli = leaf("servingbench client", ExtendedKeyUsageOID.CLIENT_AUTH, san=False)
    pem = serialization.Encoding.PEM
    paths = {
        "ca_cert": directory / "ca.pem",
        "server_cert": directory / "server.pem",
        "server_key": directory / "server.key",
        "client_cert": directory / "client.pem",
        "client_key": directory / "client.key",
    }
    _write_private(paths["ca_cert"], ca.public_bytes(pem), 0o644)
    _write_private(paths["server_cert"], srv.public_bytes(pem), 0o644)
    _write_private(paths["server_key"], pem_key(srv_key))
    _write_private(paths["client_cert"], cli.public_bytes(pem), 0o644)
    _write_private(paths["client_key"], pem_key(cli_key))
    return paths


class SecretStore:
    """Owns the private temp dir of one run.  Use as a context manager; ``make(auth=, tls=)`` returns Secrets."""

    def __init__(self) -> None:
        from servingbench.runtime.supervisor import claim_tempdir

        self.dir = Path(tempfile.mkdtemp(prefix="servingbench-secrets-"))
        os.chmod(self.dir, 0o700)
        claim_tempdir(self.dir)
        self._certs: dict[str, Path] | None = None
        self.token = _secrets.token_urlsafe(32)

    def make(self, auth: bool, tls: bool) -> Secrets:
        certs = {}
        if tls:
            if self._certs is None:
                self._certs = make_certificates(self.dir)
            certs = self._certs
        return Secrets(token=self.token if auth else None, **certs)

    def sensitive_strings(self) -> list[str]:
        """Strings that must never appear in results or reports (for redaction and for tests)."""
        out = [self.token]
        if self._certs:
            for k in ("server_key", "client_key"):
                body = self._certs[k].read_text().splitlines()
                out.extend(line for line in body if line and not line.startswith("-----"))
        return out

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "SecretStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
