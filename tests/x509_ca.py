"""A certificate authority made in the test with ``cryptography``: a server certificate for a listener
and X.509-SVIDs (a SPIFFE ID as the one URI SAN) for workloads, each written to PEM files."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

UTC = datetime.timezone.utc


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class Leaf:
    """One issued certificate: its files, and an ``ssl`` client context that presents it."""

    def __init__(self, cert_file: Path, key_file: Path, cert: x509.Certificate) -> None:
        self.cert_file, self.key_file, self.cert = cert_file, key_file, cert

    def client(self, ca_file: Path) -> ssl.SSLContext:
        """Trusts ``ca_file`` for the server, and shows this certificate when asked."""
        ctx = ssl.create_default_context(cafile=str(ca_file))
        ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        return ctx


class TestCA:
    """A self-signed P-256 CA that writes what it issues under ``tmp``."""

    __test__ = False  # not a test class, whatever pytest thinks of its name

    def __init__(self, tmp: Path, name: str = "test-ca") -> None:
        self.tmp = tmp
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(UTC)
        ski = x509.SubjectKeyIdentifier.from_public_key(self.key.public_key())
        self.cert = (
            x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = tmp / f"{name}.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self._n = 0

    def issue(self, *, spiffe_id: str | None = None, cn: str = "workload", ip: str | None = None,
              not_before: datetime.datetime | None = None, not_after: datetime.datetime | None = None) -> Leaf:
        """A leaf: an X.509-SVID when ``spiffe_id`` is given (client auth), a server certificate for ``ip``."""
        now = datetime.datetime.now(UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        if spiffe_id is not None:
            names.append(x509.UniformResourceIdentifier(spiffe_id))
        if ip is not None:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        builder = (
            x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - datetime.timedelta(minutes=5))
            .not_valid_after(not_after or now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if ip else
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        self._n += 1
        cert_file, key_file = self.tmp / f"{self.name}-{self._n}.crt", self.tmp / f"{self.name}-{self._n}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return Leaf(cert_file, key_file, cert)
