"""The lab's certificate authority: one CA, one gateway identity shared by all gateways, and
one certificate per client, generated with `cryptography`.

Rules: ECDSA P-256 keys (fast to make under emulation, loaded by charon's openssl plugin);
keys are written as unencrypted PKCS#8 PEM in a directory only root can read; nothing here
is for production use.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

GATEWAY_ID = "vpn.lab"  # every gateway presents this identity, so any of them serves any client


@dataclass(frozen=True)
class Credential:
    """A certificate and its private key, as PEM bytes."""

    name: str
    cert_pem: bytes
    key_pem: bytes


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hasync lab"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(now: datetime.datetime) -> tuple[Credential, ec.EllipticCurvePrivateKey]:
    """Create the lab's self-signed CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("hasync lab CA"))
            .issuer_name(_name("hasync lab CA")).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(key, hashes.SHA256()))
    return Credential("ca", cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)), key


def issue(ca: Credential, ca_key: ec.EllipticCurvePrivateKey, dns_id: str, server: bool,
          now: datetime.datetime) -> Credential:
    """Issue an end-entity certificate whose subjectAltName is the IKE identity `dns_id`."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (x509.CertificateBuilder().subject_name(_name(dns_id))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_id)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return Credential(dns_id, cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def make_lab_pki(clients: list[str], now: datetime.datetime) -> dict[str, Credential]:
    """Return the CA, the shared gateway credential and one credential per client name."""
    ca, ca_key = make_ca(now)
    creds = {"ca": ca, "gateway": issue(ca, ca_key, GATEWAY_ID, True, now)}
    for c in clients:
        creds[c] = issue(ca, ca_key, client_id(c), False, now)
    return creds


def client_id(name: str) -> str:
    """The IKE identity of lab client `name`."""
    return f"{name}.clients.lab"


def install_swanctl_dir(root: Path, ca: Credential, own: Credential) -> None:
    """Lay out a swanctl directory (x509ca/, x509/, pkcs8/) holding `own` and the CA."""
    for sub in ("x509ca", "x509", "pkcs8"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "x509ca" / "ca.pem").write_bytes(ca.cert_pem)
    (root / "x509" / "own.pem").write_bytes(own.cert_pem)
    key = root / "pkcs8" / "own.pem"
    key.write_bytes(own.key_pem)
    os.chmod(key, 0o600)
