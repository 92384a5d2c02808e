"""Throw-away TLS material: a test CA with a localhost server cert, and an untrusted cert."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# EC P-256 keys: generating them takes microseconds, RSA would cost ~100 ms per start.
_CURVE = ec.SECP256R1()
_VALIDITY = dt.timedelta(days=365)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for one server: the CA that vouches for it, its certificate and its key."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_ca_and_server_cert(directory: Path) -> TlsFiles:
    """Create a CA and a server cert for DNS ``localhost`` / IP 127.0.0.1 signed by it."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(_CURVE)
    ca_name = _name("mailbox-link local test CA")
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(_CURVE)
    server_cert = (
        _server_extensions(_builder(_name("localhost"), ca_name, server_key.public_key()))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return _write(directory, ca_cert, server_cert, server_key)


def make_self_signed_cert(directory: Path, names: tuple[str, ...] = ("localhost",)) -> TlsFiles:
    """Create a self-signed cert for `names` that no test CA vouches for ("untrusted" server).

    ``ca_file`` is the certificate itself, so a client can still pin it explicitly.
    """
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(_CURVE)
    name = _name(names[0])
    builder = _server_extensions(_builder(name, name, key.public_key()), names)
    cert = builder.sign(key, hashes.SHA256())
    return _write(directory, cert, cert, key)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mailbox-link tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    # Back-date a little so small clock differences never make a fresh cert "not yet valid".
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _server_extensions(
    builder: x509.CertificateBuilder, names: tuple[str, ...] = ("localhost",)
) -> x509.CertificateBuilder:
    # Strict verifiers (Python 3.13+ VERIFY_X509_STRICT) want SAN, EKU and CA=false on leaves.
    alternative_names: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    alternative_names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    return (
        builder.add_extension(
            x509.SubjectAlternativeName(alternative_names),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )


def _write(
    directory: Path,
    ca_cert: x509.Certificate,
    cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
) -> TlsFiles:
    files = TlsFiles(
        ca_file=directory / "ca.pem",
        cert_file=directory / "server.pem",
        key_file=directory / "server.key",
    )
    files.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    # Only root-run Dovecot's config process reads the key; keep it private anyway.
    files.key_file.chmod(0o600)
    return files
