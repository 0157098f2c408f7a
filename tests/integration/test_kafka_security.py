"""TLS end to end, SASL up to the handshake, and the option checks, against the real broker.

The TLS listener is the development broker behind a TLS terminator on
loopback (tests/integration/tls.py), the broker advertising the terminator's
port, so every client connection is TLS with a throwaway CA.
"""

import json
import os
import subprocess
import sys

import pytest

from ringfence.ops.broker import free_port, start_broker, stop_broker
from tests.integration.kafka_harness import Serve, unique_prefix
from tests.integration.test_kafka import offline, service_digest, session, write
from tests.integration.tls import TlsTerminator, make_certificates

PASSWORD = {"RINGFENCE_KAFKA_PASSWORD": "not-a-real-password"}


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    """(bootstrap, certificates): TLS on 127.0.0.1, the broker's plaintext port advertised nowhere."""
    directory = tmp_path_factory.mktemp("tls")
    certificates = make_certificates(directory)
    broker_port, tls_port = free_port(), free_port()
    process = start_broker(broker_port, log_path=directory / "tansu.log", advertised_port=tls_port)
    terminator = TlsTerminator(tls_port, broker_port, certificates)
    yield f"127.0.0.1:{tls_port}", certificates
    terminator.close()
    stop_broker(process, timeout=3)  # it drains open client connections first; not worth waiting for


def test_a_session_published_over_tls_is_served_and_read_back_over_tls(tmp_path, tls_broker, cli):
    bootstrap, certificates = tls_broker
    prefix = unique_prefix("tls")
    tls = ["--security-protocol", "SSL", "--ssl-cafile", str(certificates.ca)]
    kafka = ["--bootstrap", bootstrap, "--prefix", prefix, *tls]
    source = write(tmp_path, "session.jsonl", session(tmp_path, seed=23, count=1_500, traders=20))
    cli("topics", *kafka, "--partitions", "1", data=tmp_path)
    assert "as 1500 records" in cli("publish", str(source), *kafka, data=tmp_path)[1]
    expected = offline(tmp_path, cli, source, partitions=1)[0]
    assert expected["commands"]  # liquidations happen: the outbox publishes over TLS too

    serve = Serve(bootstrap, prefix, tmp_path / "svc", "--partitions", "0", *tls)
    serve.wait_for({0: expected["offset"]})
    assert serve.stop() == 0, serve.log_tail()
    digest = f"{expected['offset']} {expected['digest']}"
    assert service_digest(cli, tmp_path / "svc", prefix, 0) == digest
    assert cli("replay", "--partition", "0", *kafka, data=tmp_path)[1].strip() == digest
    watched = cli("watch", "commands", *kafka, data=tmp_path)[1].splitlines()
    assert [json.loads(line)["command_id"] for line in watched] == expected["commands"]


@pytest.mark.parametrize("command", [["topics", "--partitions", "1"], ["publish", "-"],
                                     ["serve", "--partitions", "0", "--metrics-port", "0"]])  # fmt: skip
def test_a_tls_client_without_the_ca_is_refused_with_one_line(tmp_path, tls_broker, cli, command):
    bootstrap, _ = tls_broker
    err = cli(*command, "--bootstrap", bootstrap, "--security-protocol", "SSL", data=tmp_path, stdin=b"",
              check_rc=1)[2]  # fmt: skip
    assert err.splitlines() == [f"ringfence: error: the TLS certificate of {bootstrap} failed verification: unable "
                                "to get local issuer certificate (--ssl-cafile names the CA that signed it)"]  # fmt: skip
    assert not (tmp_path / "ringfence.events-0").exists()


def test_a_plaintext_client_at_a_tls_listener_is_refused_with_one_line(tmp_path, tls_broker, cli):
    bootstrap, _ = tls_broker  # kafka-python alone would retry for ever
    err = cli("watch", "commands", "--bootstrap", bootstrap, data=tmp_path, check_rc=1)[2]
    assert err.splitlines() == [f"ringfence: error: the broker at {bootstrap} did not answer a Metadata request: the "
                                "connection was closed (--security-protocol PLAINTEXT speaks neither TLS nor SASL: "
                                "is its listener another kind?)"]  # fmt: skip


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_against_the_plaintext_broker_fails_at_the_handshake_with_one_line(tmp_path, broker, cli, mechanism):
    sasl = ["--security-protocol", "SASL_PLAINTEXT", "--sasl-mechanism", mechanism, "--sasl-username", "alice"]
    for command in (["topics", "--partitions", "1"], ["serve", "--partitions", "0", "--metrics-port", "0"]):
        err = cli(*command, "--bootstrap", broker, *sasl, data=tmp_path, env=PASSWORD, check_rc=1)[2]
        assert err.splitlines() == [f"ringfence: error: the broker at {broker} refused SASL mechanism {mechanism}: "
                                    "UnsupportedSaslMechanismError"]  # fmt: skip
        assert PASSWORD["RINGFENCE_KAFKA_PASSWORD"] not in err


def test_sasl_over_tls_gets_through_tls_to_the_sasl_handshake(tmp_path, tls_broker, cli):
    bootstrap, certificates = tls_broker
    args = ["--bootstrap", bootstrap, "--security-protocol", "SASL_SSL", "--ssl-cafile", str(certificates.ca),
            "--sasl-mechanism", "PLAIN", "--sasl-username", "alice"]  # fmt: skip
    err = cli("watch", "commands", *args, data=tmp_path, env=PASSWORD, check_rc=1)[2]
    assert err.splitlines() == [f"ringfence: error: the broker at {bootstrap} refused SASL mechanism PLAIN: "
                                "UnsupportedSaslMechanismError"]  # fmt: skip


@pytest.mark.parametrize("arguments, message", [
    (["--sasl-mechanism", "PLAIN"], "--sasl-mechanism needs --security-protocol SASL_PLAINTEXT or SASL_SSL "
                                    "(not PLAINTEXT)"),
    (["--security-protocol", "SSL", "--sasl-username", "alice"], "--sasl-username needs --security-protocol "
                                                                 "SASL_PLAINTEXT or SASL_SSL (not SSL)"),
    (["--security-protocol", "SASL_SSL", "--sasl-username", "alice"], "--security-protocol SASL_SSL needs "
                                                                      "--sasl-mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)"),
    (["--security-protocol", "SASL_PLAINTEXT", "--sasl-mechanism", "PLAIN"], "--security-protocol SASL_PLAINTEXT "
                                                                             "needs --sasl-username"),
    (["--security-protocol", "SASL_SSL", "--sasl-password-env", "NO_SUCH_VARIABLE"], "--security-protocol SASL_SSL "
     "takes the SASL password from $NO_SUCH_VARIABLE, which is empty or not set (--sasl-password-env names another "
     "variable)"),
    (["--sasl-password-env", "RINGFENCE_KAFKA_PASSWORD"], "--sasl-password-env needs --security-protocol "
                                                          "SASL_PLAINTEXT or SASL_SSL (not PLAINTEXT)"),
    (["--sasl-password", "hunter2"], "--sasl-password: the SASL password is never taken on the command line (ps and "
                                     "shell histories show it); put it in $RINGFENCE_KAFKA_PASSWORD"),
    (["--ssl-cafile", "ca.pem", "--no-ssl-check-hostname"], "--ssl-cafile, --no-ssl-check-hostname need "
                                                            "--security-protocol SSL or SASL_SSL (not PLAINTEXT)"),
    (["--security-protocol", "SSL", "--ssl-cafile", "missing.pem"], "--ssl-cafile missing.pem: No such file or "
                                                                    "directory"),
    (["--security-protocol", "SSL", "--ssl-cafile", "empty.pem"], "--ssl-cafile empty.pem: not a usable PEM file "
                                                                  "(NO_CERTIFICATE_OR_CRL_FOUND)"),
    (["--security-protocol", "SSL", "--ssl-certfile", "empty.pem"], "--ssl-certfile empty.pem: not a PEM "
                                                                    "certificate with its key"),
    (["--security-protocol", "SSL", "--ssl-keyfile", "empty.pem"], "--ssl-keyfile needs --ssl-certfile (the client "
                                                                   "certificate it belongs to)"),
])  # fmt: skip
def test_contradictory_or_unusable_security_options_are_one_line_usage_errors(tmp_path, arguments, message):
    (tmp_path / "empty.pem").write_bytes(b"")
    command = ["topics", "--partitions", "1", "--bootstrap", f"127.0.0.1:{free_port()}", *arguments]
    result = subprocess.run([sys.executable, "-m", "ringfence.ops.cli", *command], cwd=tmp_path, capture_output=True,
                            env={**os.environ, **PASSWORD}, timeout=60)  # relative file names, in tmp_path
    assert result.returncode == 2, result.stderr
    assert result.stderr.decode().splitlines() == [f"ringfence: error: {message}"]
    assert b"hunter2" not in result.stderr
