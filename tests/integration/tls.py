"""A TLS listener on loopback for the tests: a throwaway CA, a broker certificate, and a TLS terminator.

The development broker (Tansu) speaks plaintext only, so ``TlsTerminator``
accepts TLS on one port and forwards the plaintext to the broker; the broker
advertises the terminator's port (``start_broker(advertised_port=...)``), so
the clients' every connection, not just the first, goes through TLS.
"""

import asyncio
import datetime
import ipaddress
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ringfence.ops.broker import LOOPBACK


@dataclass(frozen=True)
class Certificates:
    ca: Path  # what the clients trust (--ssl-cafile)
    cert: Path  # the broker's, for 127.0.0.1, signed by the CA
    key: Path


def make_certificates(directory: Path) -> Certificates:
    now = datetime.datetime.now(datetime.timezone.utc)

    def builder(subject: str, issuer: x509.Name | None, key) -> x509.CertificateBuilder:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        return (x509.CertificateBuilder().subject_name(name).issuer_name(issuer if issuer is not None else name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1)))  # fmt: skip

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (builder("ringfence test CA", None, ca_key)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (builder(LOOPBACK, ca.subject, key)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))  # fmt: skip
    files = Certificates(directory / "ca.pem", directory / "broker.pem", directory / "broker.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))  # fmt: skip
    return files


class TlsTerminator:
    """TLS on 127.0.0.1:``port``, each connection forwarded in plaintext to 127.0.0.1:``upstream``."""

    def __init__(self, port: int, upstream: int, certificates: Certificates):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificates.cert, certificates.key)
        self.upstream = upstream
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(lambda loop, error: None)  # refused handshakes are what some tests want
        self.server = self.loop.run_until_complete(asyncio.start_server(self._forward, LOOPBACK, port, ssl=context))
        self.thread = threading.Thread(target=self.loop.run_forever, name="tls-terminator", daemon=True)
        self.thread.start()

    async def _forward(self, client_reader, client_writer) -> None:
        try:
            broker_reader, broker_writer = await asyncio.open_connection(LOOPBACK, self.upstream)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(self._pump(client_reader, broker_writer), self._pump(broker_reader, client_writer),
                             return_exceptions=True)  # fmt: skip

    @staticmethod
    async def _pump(reader, writer) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
