"""A private CA and the certificates of one farm's cluster, for farms not deployed by Pulumi
(a local farm, tests). Deployed farms get theirs from pulumi-tls in the Pulumi program.

Dask verifies the peer against the cluster CA and not the host name (dte.md 3.1, Test E),
so the CA must be dedicated to the farm. Each certificate names its member (CN) and its role
(OU: scheduler, agent or orchestrator), which farm/roles.py enforces.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=825)


@dataclass(frozen=True)
class CertPair:
    cert_pem: str
    key_pem: str


@dataclass(frozen=True)
class TlsFiles:
    """Where one role's material lives on disk (or inline PEM, which Dask also accepts)."""

    ca: str
    cert: str
    key: str


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _name(common_name: str, role: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nx-farm")]
    if role is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role))
    return x509.Name([*attributes, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def new_ca(common_name: str = "nx-farm cluster CA") -> CertPair:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name)).issuer_name(_name(common_name))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return CertPair(cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key))


def issue(ca: CertPair, common_name: str, role: str | None, addresses: tuple[str, ...] = ()) -> CertPair:
    """A certificate for one cluster member in one role, usable both as TLS server and client
    (Dask nodes are both). A certificate without a role (None) is refused by every farm server."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    ca_key = serialization.load_pem_private_key(ca.key_pem.encode(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    names: list[x509.GeneralName] = [x509.DNSName(common_name)]
    for address in addresses:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            names.append(x509.DNSName(address))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, role)).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return CertPair(cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key))


def write_member(directory: Path, ca: CertPair, name: str, role: str | None,
                 addresses: tuple[str, ...] = ()) -> TlsFiles:
    """One member's certificate and key (0600) under `directory`, next to the CA's certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_path = directory / "ca.crt"
    ca_path.write_text(ca.cert_pem)  # always: a directory reused with a new CA must not keep the old one
    pair = issue(ca, name, role, addresses)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_text(pair.cert_pem)
    key_path.touch(mode=0o600)
    key_path.write_text(pair.key_pem)
    return TlsFiles(str(ca_path), str(cert_path), str(key_path))


def write_cluster(directory: Path, members: dict[str, tuple[str, tuple[str, ...]]],
                  ca: CertPair | None = None) -> dict[str, TlsFiles]:
    """A CA plus one certificate per member (name -> (role, addresses)), written 0600 under
    `directory`. The CA key is not kept unless the caller passes its own `ca`: without it
    nothing more can be signed, so nothing more can join."""
    ca = ca or new_ca()
    return {name: write_member(directory, ca, name, role, addresses) for name, (role, addresses) in members.items()}
