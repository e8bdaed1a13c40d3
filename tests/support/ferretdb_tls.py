"""FerretDB that speaks only TLS, with a certificate authority made on the spot.

Hosted MongoDB requires TLS, and a client reaches it with ``tls=true`` and the
provider's CA file. Here a throwaway CA signs a server certificate for
127.0.0.1/localhost; FerretDB listens with it on its TLS listener only (its plain
listener is turned off), and the URI names the CA file as a hosted one would.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from tests.support.ferretdb import FerretDB

# Long enough for any test run; short enough that a stray file is worthless.
VALIDITY = dt.timedelta(days=1)


@dataclass(frozen=True)
class Certificates:
    """PEM files: the CA a client trusts, and the server's certificate and key it signed."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_certificates(directory: Path, host: str = "localhost") -> Certificates:
    """Write a fresh CA and a server certificate for ``host`` and 127.0.0.1 into ``directory``."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)  # a little slack for clock skew

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("sse-rooms test CA")).issuer_name(name("sse-rooms test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(name(host)).issuer_name(ca_cert.subject)
        .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = Certificates(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem")
    files.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    files.key_file.write_bytes(server_key.private_bytes(serialization.Encoding.PEM,
                                                        serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    files.key_file.chmod(0o600)
    return files


class TLSFerretDB(FerretDB):
    """A :class:`FerretDB` whose only listener is TLS; ``uri`` says ``tls=true`` and names the CA file.

    Start, stop, kill and restart are FerretDB's own: a restart keeps the port,
    the data and the certificate.
    """

    def __init__(self, binary: str, directory: Path, port: int | None = None) -> None:
        super().__init__(binary, directory, port)
        self.certificates = make_certificates(Path(directory) / "tls")

    @property
    def uri(self) -> str:
        return f"mongodb://localhost:{self.port}/?tls=true&tlsCAFile={self.certificates.ca_file}"

    def command(self) -> list[str]:
        plain = f"--listen-addr=127.0.0.1:{self.port}"
        return [
            *(argument for argument in super().command() if argument != plain),
            "--listen-addr=",  # no plain listener: a client that does not speak TLS is not answered
            f"--listen-tls=127.0.0.1:{self.port}",
            f"--listen-tls-cert-file={self.certificates.cert_file}",
            f"--listen-tls-key-file={self.certificates.key_file}",
        ]
