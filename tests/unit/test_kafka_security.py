"""TLS and SASL settings (ops.kafka_security): from the command line into every kafka-python client, without a broker."""

import ssl

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from ringfence.ops import cli
from ringfence.ops.kafka_log import admin_settings, consumer_settings, producer_settings
from ringfence.ops.kafka_security import KafkaSecurity, SecurityError
from tests.integration.tls import make_certificates

SECRET = "correct horse battery staple"


def settings_from(argv: list[str]):
    return cli._kafka_settings(cli.build_parser().parse_args(["watch", "commands", *argv]))


def test_the_tls_and_sasl_options_reach_every_kafka_python_client(tmp_path, monkeypatch):
    certificates = make_certificates(tmp_path)
    monkeypatch.setenv("BROKER_SECRET", SECRET)
    settings = settings_from(["--security-protocol", "SASL_SSL", "--sasl-mechanism", "SCRAM-SHA-512",
                              "--sasl-username", "alice", "--sasl-password-env", "BROKER_SECRET",
                              "--ssl-cafile", str(certificates.ca), "--no-ssl-check-hostname"])  # fmt: skip
    context = settings.security.ssl_context
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    assert not context.check_hostname and context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "ringfence test CA"),),)]
    expected = {"security_protocol": "SASL_SSL", "ssl_context": context, "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_plain_username": "alice", "sasl_plain_password": SECRET}  # fmt: skip
    consumer = KafkaConsumer(**consumer_settings(settings, None))  # a pinned api_version: no connection yet
    producer = KafkaProducer(**producer_settings(settings))
    try:
        for client in (consumer, producer):
            assert {key: client.config[key] for key in expected} == expected, type(client).__name__
    finally:
        consumer.close()
        producer.close()
    admin = admin_settings(settings)  # KafkaAdminClient connects in its constructor: its settings, checked by name
    assert {key: admin[key] for key in expected} == expected and set(admin) <= set(KafkaAdminClient.DEFAULT_CONFIG)
    assert SECRET not in repr(settings)  # nor in a log line or traceback that prints the settings


def test_plaintext_is_the_default_and_sets_nothing_else():
    settings = settings_from([])
    assert settings.security.client_config() == {"security_protocol": "PLAINTEXT", "ssl_context": None,
                                                 "sasl_mechanism": None, "sasl_plain_username": None,
                                                 "sasl_plain_password": None}  # fmt: skip


def test_each_tls_setting_builds_one_context_shared_by_every_client(tmp_path):
    certificates = make_certificates(tmp_path)
    security = KafkaSecurity("SSL", ssl_cafile=str(certificates.ca))
    assert security.ssl_context.check_hostname  # by default
    assert security.client_config()["ssl_context"] is security.client_config()["ssl_context"]
    with_key = KafkaSecurity("SSL", ssl_certfile=str(certificates.cert), ssl_keyfile=str(certificates.key))
    assert with_key.ssl_context is not None  # a client certificate with its key loads
    with pytest.raises(SecurityError, match="not a PEM certificate with its key"):
        KafkaSecurity("SSL", ssl_certfile=str(certificates.cert))  # the key is in another file
