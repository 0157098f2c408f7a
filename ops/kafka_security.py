"""TLS and SASL for the Kafka clients: one settings object, checked once, handed to every client.

``KafkaSecurity`` holds what the operator chose (``--security-protocol``,
``--sasl-*``, ``--ssl-*``), refuses contradictory or unusable choices with a
``SecurityError`` naming the option, and builds the one ``ssl.SSLContext``
that every KafkaProducer, KafkaConsumer and KafkaAdminClient gets
(``client_config``) and that ``kafka_log.check_reachable`` handshakes with
(``handshake_problem``). Only that check imports kafka: the command line
reads the choices at every start.
"""

from dataclasses import dataclass, field

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
PASSWORD_ENV = "RINGFENCE_KAFKA_PASSWORD"  # the SASL password is read from the environment, never from argv


class SecurityError(ValueError):
    """The TLS or SASL settings contradict each other or name a file that cannot be used."""


def uses_sasl(protocol: str) -> bool:
    return protocol in ("SASL_PLAINTEXT", "SASL_SSL")


def uses_tls(protocol: str) -> bool:
    return protocol in ("SSL", "SASL_SSL")


@dataclass(frozen=True)
class KafkaSecurity:
    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None  # None: the system's CAs
    ssl_certfile: str | None = None  # a client certificate (may hold its key too)
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True
    ssl_context: object = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.protocol not in SECURITY_PROTOCOLS:
            raise SecurityError(f"--security-protocol {self.protocol!r} is not one of {', '.join(SECURITY_PROTOCOLS)}")
        if uses_sasl(self.protocol):
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise SecurityError(f"--security-protocol {self.protocol} needs --sasl-mechanism "
                                    f"({', '.join(SASL_MECHANISMS)})")  # fmt: skip
            if not self.sasl_username:
                raise SecurityError(f"--security-protocol {self.protocol} needs --sasl-username")
            if not self.sasl_password:
                raise SecurityError(f"--security-protocol {self.protocol} needs a SASL password")
        else:
            self._refuse_unused("SASL_PLAINTEXT or SASL_SSL", {
                "--sasl-mechanism": self.sasl_mechanism,
                "--sasl-username": self.sasl_username,
                "a SASL password": self.sasl_password,
            })  # fmt: skip
        if uses_tls(self.protocol):
            object.__setattr__(self, "ssl_context", self._build_ssl_context())
        else:
            self._refuse_unused("SSL or SASL_SSL", {
                "--ssl-cafile": self.ssl_cafile,
                "--ssl-certfile": self.ssl_certfile,
                "--ssl-keyfile": self.ssl_keyfile,
                "--no-ssl-check-hostname": not self.ssl_check_hostname,
            })  # fmt: skip

    def _refuse_unused(self, protocols: str, options: dict) -> None:
        """An option that would change nothing is an error, not a silent no-op."""
        given = [option for option, value in options.items() if value]
        if given:
            needs = "needs" if len(given) == 1 else "need"
            raise SecurityError(f"{', '.join(given)} {needs} --security-protocol {protocols} (not {self.protocol})")

    def _build_ssl_context(self):
        """As kafka-python builds its own from file names: TLS 1.2 at least, the broker's certificate verified."""
        import ssl

        if self.ssl_keyfile and not self.ssl_certfile:
            raise SecurityError("--ssl-keyfile needs --ssl-certfile (the client certificate it belongs to)")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verify_mode CERT_REQUIRED
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = self.ssl_check_hostname
        try:
            if self.ssl_cafile:
                context.load_verify_locations(cafile=self.ssl_cafile)
            else:
                context.load_default_certs()
        except OSError as error:  # ssl.SSLError too
            where = f"--ssl-cafile {self.ssl_cafile}" if self.ssl_cafile else "the system's CA certificates"
            raise SecurityError(f"{where}: {_reason(error)}") from None
        if self.ssl_certfile:
            try:
                context.load_cert_chain(certfile=self.ssl_certfile, keyfile=self.ssl_keyfile)
            except OSError as error:
                files = f"--ssl-certfile {self.ssl_certfile}" + (f" --ssl-keyfile {self.ssl_keyfile}"
                                                                  if self.ssl_keyfile else "")  # fmt: skip
                raise SecurityError(f"{files}: {_reason(error)}") from None
        return context

    @property
    def tls(self) -> bool:
        return uses_tls(self.protocol)

    @property
    def sasl(self) -> bool:
        return uses_sasl(self.protocol)

    def client_config(self) -> dict:
        """The kafka-python settings, the same for producers, consumers and admin clients."""
        return {
            "security_protocol": self.protocol,
            "ssl_context": self.ssl_context,  # kafka-python then ignores its ssl_cafile/certfile/keyfile/check_hostname
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_plain_username": self.sasl_username,  # kafka-python's name for PLAIN and SCRAM alike
            "sasl_plain_password": self.sasl_password,
        }


def handshake_problem(connection, host: str, where: str, security: KafkaSecurity, client_id: str) -> str | None:
    """Why the broker at ``where`` refuses these TLS or SASL settings, or None; ``connection`` is then closed.

    Over a fresh connection: the TLS handshake with the clients' own
    SSLContext, then one request, answered only if the listener expects what
    we speak: SaslHandshake with SASL (the broker must offer the mechanism;
    the exchange itself is kafka-python's), else Metadata for no topics.
    """
    import ssl

    from kafka.protocol.metadata import MetadataRequest
    from kafka.protocol.sasl import SaslHandshakeRequest

    try:
        if security.tls:
            try:
                connection = security.ssl_context.wrap_socket(connection, server_hostname=host)
            except ssl.SSLCertVerificationError as error:
                return (f"the TLS certificate of {where} failed verification: {error.verify_message} "
                        "(--ssl-cafile names the CA that signed it)")  # fmt: skip
            except OSError as error:  # ssl.SSLError, a reset, a time-out
                return f"the TLS handshake with {where} failed: {_failure(error, connection)} (is it a TLS listener?)"
        if security.sasl:
            what, request = "SaslHandshake", SaslHandshakeRequest(mechanism=security.sasl_mechanism, version=1)
        else:
            what, request = "Metadata", MetadataRequest(topics=[], version=1)
        try:
            answer = _ask(connection, request, client_id)
        except OSError as error:
            return (f"the broker at {where} did not answer a {what} request: {_failure(error, connection)} "
                    f"(--security-protocol {security.protocol} speaks {_SPEAKS[security.protocol]}: "
                    "is its listener another kind?)")  # fmt: skip
        return _sasl_refusal(answer, where, security.sasl_mechanism) if security.sasl else None
    finally:
        connection.close()


_SPEAKS = {"PLAINTEXT": "neither TLS nor SASL", "SSL": "TLS without SASL", "SASL_PLAINTEXT": "SASL without TLS",
           "SASL_SSL": "TLS and SASL"}  # fmt: skip


def _sasl_refusal(answer, where: str, mechanism: str) -> str | None:
    from kafka.errors import for_code

    offered = mechanism in answer.mechanisms
    if answer.error_code == 0 and offered:
        return None
    why = for_code(answer.error_code).__name__ if answer.error_code else "not offered"
    offers = "" if offered else f" (it offers: {', '.join(answer.mechanisms) or 'none'})"
    return f"the broker at {where} refused SASL mechanism {mechanism}: {why}{offers}"


def _ask(connection, request, client_id: str):
    """Send one Kafka request over a blocking socket (its time-out bounds the wait) and return the answer."""
    from kafka.errors import KafkaError
    from kafka.protocol.parser import KafkaProtocol

    protocol = KafkaProtocol(client_id=client_id)
    protocol.send_request(request)
    connection.sendall(protocol.send_bytes())
    while True:
        data = connection.recv(65536)
        if not data:
            raise ConnectionError("the connection was closed")
        try:
            responses = protocol.receive_bytes(data)
        except KafkaError as error:
            raise ConnectionError(f"an answer that is not Kafka's ({error})") from None
        if responses:
            return responses[0][1]


def _failure(error: OSError, connection) -> str:
    if isinstance(error, TimeoutError):
        return f"no answer within {connection.gettimeout():.0f} s"
    return error.strerror or str(error)


def _reason(error: OSError) -> str:
    """'No such file or directory', or the TLS library's reason, without the errno and source line."""
    import ssl

    if isinstance(error, ssl.SSLError):
        return f"not a usable PEM file ({error.reason})" if error.reason else "not a PEM certificate with its key"
    return error.strerror or str(error)
