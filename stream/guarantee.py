"""How a faust app sends one record under the processing guarantee: the one at-least-once /
exactly-once switch (predictions, churn alerts, dead letters, training samples).

Under exactly_once each output must join the transaction that commits its *source* record's
offset: faust keeps one transactional producer per input partition ("{app id}-{topic group}-
{partition}", TransactionManager.commit), the one a new owner fences on rebalance. faust's own
Topic.send (TransactionManager.send) instead picks the producer from the *output* record's
partition as the consumer's metadata knows it; for a topic the worker does not consume
(predictions, churn-alerts, dead-letter) the consumer knows no partitions, and faust silently
falls back to its plain producer: outputs committed at once, outside any transaction, and sent
again after a crash (tests/faults/test_kill.py, test_faust_eos.py)."""
from __future__ import annotations

from typing import Any, Awaitable, Callable

Sender = Callable[..., Awaitable[Any]]  # async send(key=..., value=..., source=(topic, partition))


def transactional_id(app: Any, topic: str, partition: int) -> str:
    """The id of faust's transaction that commits the offsets of input (topic, partition)."""
    return f"{app.conf.id}-{app.assignor.group_for_topic(topic)}-{partition}"


def record_sender(app: Any, topic: Any, processing_guarantee: str) -> Sender:
    """The cheapest way to put one raw record on `topic` (a faust Topic of one name).

    send(key=, value=, source=None, partition=None, headers=None); `source` is the
    (topic, partition) of the input record the output comes from.

    at_least_once: a plain record goes straight to faust's producer (about half the per-message
    cost of Topic.send; the consumer flushes it before committing offsets); one with a partition
    or headers through Topic.send. exactly_once: into the source's transaction (module doc);
    without a source, Topic.send (faust's routing)."""
    name = topic.get_topic_name()
    producer = app.producer
    if processing_guarantee == "exactly_once":
        async def send_tx(*, key: bytes | None, value: bytes, source: tuple[str, int] | None = None,
                          partition: int | None = None, headers: Any = None) -> Any:
            if source is None:
                return await topic.send(key=key, value=value, partition=partition, headers=headers)
            return await producer.send(name, key, value, partition, None, headers,
                                       transactional_id=transactional_id(app, *source))

        return send_tx

    async def send(*, key: bytes | None, value: bytes, source: tuple[str, int] | None = None,
                   partition: int | None = None, headers: Any = None) -> Any:
        if partition is None and headers is None:
            return await producer.send(name, key, value, None, None, None)
        return await topic.send(key=key, value=value, partition=partition, headers=headers)

    return send


def fence_commits(app: Any, batch_lock: Any) -> None:
    """exactly_once: make faust's periodic commit wait for the batch in progress, and flush the
    producer (its buffer holds the table's changelog records) before the transaction commits.

    faust commits the offsets of acked messages at any await point. A commit that fell between a
    batch's state writes and its ack put the changelog records in transaction N and the
    predictions and input offsets in N+1; a crash then aborted N+1, the event was read again, the
    recovered state already held it (redelivery: skipped) and its prediction was never published.
    faust also skips the buffer flush under exactly_once (it flushes before an at-least-once
    commit), so changelog records still queued could land in the next transaction."""
    # Patched once the app runs: touching app.consumer earlier creates it before faust knows it is
    # in a worker, and app.in_transaction (cached) would stay False: no transactions at all.
    @app.task
    async def fence() -> None:
        consumer = app.consumer
        commit = consumer.commit

        async def fenced_commit(*args: Any, **kwargs: Any) -> bool:
            async with batch_lock:
                await app.producer.flush()
                return await commit(*args, **kwargs)

        consumer.commit = fenced_commit
