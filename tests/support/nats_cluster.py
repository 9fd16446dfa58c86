"""A three-node JetStream cluster on loopback, for fault and permission tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from services.tooling.embedded import EmbeddedNats, free_port

__all__ = ["three_nodes"]


def three_nodes(tmp_path: Path, **node_options: Any) -> Iterator[list[EmbeddedNats]]:
    """Start three routed nodes (``n0``…``n2``, cluster ``dfm``) with ``node_options`` passed to
    each ``EmbeddedNats``; yield them; stop them. Use with ``yield from`` in a fixture."""
    ports, cluster_ports = [free_port() for _ in range(3)], [free_port() for _ in range(3)]
    routes = ",".join(f"nats://127.0.0.1:{p}" for p in cluster_ports)
    nodes = [
        EmbeddedNats(
            store_dir=tmp_path / f"n{i}",
            port=ports[i],
            **node_options,
            extra_args=(
                "--server_name",
                f"n{i}",
                "--cluster_name",
                "dfm",
                "--cluster",
                f"nats://127.0.0.1:{cluster_ports[i]}",
                "--routes",
                routes,
            ),
        )
        for i in range(3)
    ]
    for node in nodes:
        node.start()
    yield nodes
    for node in nodes:
        node.stop()
