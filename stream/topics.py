"""Create seqstream's topics and check that the inputs are co-partitioned (kafka-python admin)."""
from __future__ import annotations

from dataclasses import dataclass

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import InvalidReplicationFactorError, TopicAlreadyExistsError

from stream.config import Settings
from stream.kafka import kafka_client, kafka_client_options


class TopicError(RuntimeError):
    """Topics are missing or not co-partitioned: the message is one line for the operator."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


def topic_specs(settings: Settings, partitions: int) -> list[TopicSpec]:
    """Inputs, outputs and the state changelog share the partition count (co-partitioning);
    model updates and training samples have one partition so one trainer owns them."""
    compact = {"cleanup.policy": "compact"}
    week = {"retention.ms": str(7 * 24 * 3600 * 1000)}
    # Inputs keep the time a record arrived, not the producer's: a replayed log stamps records
    # with their (historical) event time, and time-based retention would delete them about
    # 30 s after they land, before a worker that is behind has read them. The event time
    # travels in the payload (ts_ms), which is all the worker reads.
    inputs = {**week, "message.timestamp.type": "LogAppendTime"}
    specs = [TopicSpec(t, partitions, inputs) for t in settings.input_topics]
    specs += [
        TopicSpec(settings.predictions_topic, partitions, week),
        TopicSpec(settings.dead_letter_topic, partitions, {"retention.ms": str(30 * 24 * 3600 * 1000)}),
        TopicSpec(settings.churn_alerts_topic, partitions, week),
        TopicSpec(settings.anomalies_topic, partitions, week),
        TopicSpec(settings.churn_commands_topic, partitions, {"retention.ms": str(24 * 3600 * 1000)}),
        # the latest profile per user (key = user key) stays; older ones are compacted away
        TopicSpec(settings.profiles_topic, partitions, compact),
        TopicSpec(settings.state_changelog_topic, partitions, compact),
        TopicSpec(settings.model_updates_topic, 1, compact),
        TopicSpec(settings.topic("training-samples"), 1, {"retention.ms": str(24 * 3600 * 1000)}),
    ]
    return specs


def create_topics(bootstrap: str, settings: Settings, partitions: int,
                  replication_factor: int = 1) -> list[str]:
    """Create what is missing; returns the names created. Existing topics are left alone.
    `replication_factor`: 1 suits a single broker; production clusters want 3."""
    if partitions < 1:
        raise TopicError(f"partitions must be at least 1, got {partitions}")
    if replication_factor < 1:
        raise TopicError(f"replication factor must be at least 1, got {replication_factor}")
    admin = kafka_client(KafkaAdminClient, bootstrap, kafka_client_options(settings),
                         client_id="seqstream-topics")
    try:
        existing = set(admin.list_topics())
        new = [NewTopic(s.name, s.partitions, replication_factor, topic_configs=s.config)
               for s in topic_specs(settings, partitions) if s.name not in existing]
        created: list[str] = []
        for topic in new:  # one by one, so a race with another creator is harmless
            try:
                admin.create_topics([topic])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
            except InvalidReplicationFactorError:
                raise TopicError(f"replication factor {replication_factor} is more than the "
                                 "cluster's brokers can hold (use --replication-factor)") from None
        return created
    finally:
        admin.close()


def partition_counts(bootstrap: str, topics: list[str],
                     options: dict | None = None) -> dict[str, int | None]:
    """Partitions per topic (None: missing); `options`: kafka_client_options(settings)."""
    consumer = kafka_client(KafkaConsumer, bootstrap, options, client_id="seqstream-check")
    try:
        found = consumer.topics()
        return {t: (len(consumer.partitions_for_topic(t) or ()) if t in found else None)
                for t in topics}
    finally:
        consumer.close()


def check_copartitioned(bootstrap: str, settings: Settings) -> int:
    """The partition count of the inputs, or TopicError if they or the changelog disagree."""
    keyed = settings.input_topics + [settings.churn_commands_topic]
    names = keyed + [settings.state_changelog_topic]
    counts = partition_counts(bootstrap, names, kafka_client_options(settings))
    missing = [t for t in keyed if counts[t] is None]
    if missing:
        raise TopicError(f"topics missing: {', '.join(missing)} "
                         f"(run: seqstream topics create --partitions N"
                         f"{' --prefix ' + settings.prefix if settings.prefix else ''})")
    present = {t: n for t, n in counts.items() if n is not None}
    if len(set(present.values())) > 1:
        detail = ", ".join(f"{t}={n}" for t, n in present.items())
        raise TopicError(f"topics are not co-partitioned ({detail}); inputs and the state "
                         "changelog need the same partition count")
    return counts[settings.input_topics[0]]  # type: ignore[return-value]


def historical_time_topics(bootstrap: str, settings: Settings) -> list[str]:
    """Input topics that keep the producer's timestamp (not LogAppendTime): time-based retention
    deletes a replayed historical log from them before a worker that is behind has read it.
    Topics made by `topics create` never are; ones made by hand or by an older release may be."""
    admin = kafka_client(KafkaAdminClient, bootstrap, kafka_client_options(settings),
                         client_id="seqstream-topics")
    try:
        found = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t, configs=["message.timestamp.type"])
             for t in settings.input_topics], config_filter="all").get("topic", {})
    finally:
        admin.close()
    return [t for t in settings.input_topics
            if found.get(t, {}).get("message.timestamp.type", {}).get("value", "LogAppendTime")
            != "LogAppendTime"]


HISTORICAL_TIME_ADVICE = ("keep the producer's timestamp: a replayed historical log can be deleted "
                          "by retention before it is read (kafka-configs --alter --add-config "
                          "message.timestamp.type=LogAppendTime)")


def delete_topics(bootstrap: str, settings: Settings) -> list[str]:
    """Delete this deployment's topics (demo and test clean-up); returns the names deleted."""
    admin = kafka_client(KafkaAdminClient, bootstrap, kafka_client_options(settings),
                         client_id="seqstream-topics")
    try:
        existing = set(admin.list_topics())
        names = [s.name for s in topic_specs(settings, 1) if s.name in existing]
        if names:
            admin.delete_topics(names)
        return names
    finally:
        admin.close()
