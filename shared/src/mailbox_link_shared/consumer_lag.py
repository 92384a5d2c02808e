"""Keeps the consumer-lag gauge of one consumer group up to date while it consumes.

Lag of a partition this process owns = its log end offset minus the offset this process last
committed there (or its fetch position when it committed nothing there yet). One request per
round (the end offsets); the rest is known locally. Measured every LAG_INTERVAL_SECONDS:
a stuck or slow consumer shows as a growing lag (alerts in deploy/prometheus/alerts.yml).
"""

import asyncio
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from mailbox_link_shared import metrics

LAG_INTERVAL_SECONDS = 5.0

logger = logging.getLogger(__name__)


CommittedOf = Callable[[TopicPartition], int | None]


async def measure_lag(
    consumer: AIOKafkaConsumer, service: str, known: set[TopicPartition], committed_of: CommittedOf
) -> None:
    """Sets the gauge for each partition owned now and drops those no longer owned; `known`
    holds the partitions with a series (updated in place)."""
    owned = set(consumer.assignment())
    for tp in known - owned:
        metrics.forget_consumer_lag(service, tp.topic, tp.partition)
    known &= owned
    if not owned:
        return
    ends = await consumer.end_offsets(list(owned))
    for tp in owned:
        committed = committed_of(tp)
        if committed is None:
            try:
                committed = await consumer.position(tp)
            except (KafkaError, AssertionError, ValueError):
                continue  # revoked meanwhile, or no position yet: next round
        metrics.consumer_lag(service, tp.topic, tp.partition, ends.get(tp, 0) - committed)
        known.add(tp)


async def lag_loop(consumer: AIOKafkaConsumer, service: str, committed_of: CommittedOf) -> None:
    """Measures the lag until cancelled; a failed round (Kafka away) is tried again later."""
    known: set[TopicPartition] = set()
    try:
        while True:
            try:
                await measure_lag(consumer, service, known, committed_of)
            except KafkaError as exc:
                logger.debug("consumer lag not measured: %s", type(exc).__name__)
            except Exception:
                logger.exception("consumer lag not measured")
            await asyncio.sleep(LAG_INTERVAL_SECONDS)
    finally:
        for tp in known:
            metrics.forget_consumer_lag(service, tp.topic, tp.partition)
