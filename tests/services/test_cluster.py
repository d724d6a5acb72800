"""free_port: ports that outgoing connections cannot take before a server binds them."""

from __future__ import annotations

import socket

from services.cluster import FREE_PORTS_FROM, _ephemeral_ports, free_port


def test_free_ports_lie_below_the_ephemeral_range_and_can_be_bound():
    low, high = _ephemeral_ports()
    assert 0 < low <= high
    ports = {free_port() for _ in range(20)}
    assert len(ports) > 1
    for port in ports:
        assert FREE_PORTS_FROM <= port < low
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # still free
