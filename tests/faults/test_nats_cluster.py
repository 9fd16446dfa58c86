"""A 3-node NATS cluster on loopback: R3 streams, webhooks through the ingress, the stream
leader SIGKILLed in the middle of the traffic and restarted later → every accepted event is
processed exactly once (issue: deployment and operations, "3-node cluster test")."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from services.tooling.embedded import EmbeddedNats
from tests.support.contacts import ALOWARE_AUTH, aloware_contact, done
from tests.support.nats_cluster import three_nodes
from tests.support.sync_rig import eventually, pipeline_settings, running_pipeline


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[EmbeddedNats]]:
    yield from three_nodes(tmp_path)


async def jetstream_ready(urls: list[str]) -> bool:
    nc = await nats.connect(servers=urls, connect_timeout=2, max_reconnect_attempts=1)
    try:
        await nc.jetstream().account_info()
        return True
    except Exception:  # no meta leader elected yet
        return False
    finally:
        await nc.close()


async def stream_leader(urls: list[str]) -> str:
    nc = await nats.connect(servers=urls)
    try:
        info = await nc.jetstream().stream_info("WEBHOOKS")
        assert info.config.num_replicas == 3 and info.cluster is not None
        return str(info.cluster.leader)
    finally:
        await nc.close()


async def test_stream_leader_killed_and_restarted_loses_and_duplicates_nothing(
    base_env: dict[str, str], tmp_path: Path, clean_db: str, cluster: list[EmbeddedNats]
) -> None:
    urls = [node.url for node in cluster]
    await eventually(lambda: jetstream_ready(urls), timeout=30)
    settings = pipeline_settings({**base_env, "NATS_URL": ",".join(urls)}, tmp_path, DFM_STREAM_REPLICAS="3")
    accepted: list[str] = []
    async with running_pipeline(settings) as p:

        async def send(n: int) -> None:
            answer = await p.ingress.post(
                "/api/webhooks/aloware", headers=ALOWARE_AUTH, content=json.dumps(aloware_contact(7000 + n))
            )
            assert answer.status_code == 200, answer.text
            accepted.append(answer.json()["id"])

        for n in range(15):
            await send(n)
        leader = await stream_leader(urls)
        victim = cluster[int(leader.removeprefix("n"))]
        victim.kill()  # SIGKILL the stream leader with traffic in flight
        for n in range(15, 30):
            await send(n)
        victim.start()
        for n in range(30, 40):
            await send(n)

        async def all_done() -> bool:
            return all([await done(clean_db, i) for i in accepted])

        await eventually(all_done, timeout=120)
        contacts = await p.ghl_contacts()
        creates = [
            c
            for c in await p.calls("ghl")
            if c["method"] == "POST" and c["path"] == "/contacts/" and c["status"] == 201
        ]
    assert len(accepted) == 40
    assert len(contacts) == 40 and len(creates) == 40
    assert await stream_leader(urls)  # the cluster has a leader again, three replicas
