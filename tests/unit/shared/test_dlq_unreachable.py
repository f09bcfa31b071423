"""`crm dlq list|replay` with the broker down: an error, and no client left open."""

from __future__ import annotations

import gc
import warnings

import pytest
from aiokafka.errors import KafkaConnectionError

from shared.devstack.process import free_port
from shared.messaging import dlq
from shared.settings import ServiceSettings


@pytest.mark.parametrize("command", ["list", "replay"])
async def test_a_broker_that_does_not_answer_leaves_no_consumer_open(command: str) -> None:
    settings = ServiceSettings(kafka_bootstrap_servers=f"127.0.0.1:{free_port()}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(KafkaConnectionError):
            if command == "list":
                await dlq.read_all(settings=settings)
            else:
                await dlq.replay(settings=settings)
        gc.collect()
    unclosed = [w for w in caught if "Unclosed AIOKafka" in str(w.message)]
    assert unclosed == []
