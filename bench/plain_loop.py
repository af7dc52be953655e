"""The ceiling for bench_pipeline: the same decode -> state -> score -> publish work as the faust
worker, written as a bare aiokafka loop (no framework, no changelog, no commits).

    python bench/plain_loop.py --broker HOST:PORT --prefix P --model model.pt --data-dir DIR
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from rocksdict import Rdict

from models.checkpoint import load_checkpoint
from stream.config import Settings
from stream.events import Event, decode_event, encode_predictions, user_key
from stream.scoring import Scorer, ScoringModel
from stream.state import decode_state, encode_state


async def run(args: argparse.Namespace) -> None:
    settings = Settings(prefix=args.prefix)
    scorer = Scorer(ScoringModel.from_checkpoint(load_checkpoint(args.model, "cpu")), top_k=20)
    db = Rdict(args.data_dir)
    consumer = AIOKafkaConsumer(*settings.input_topics, bootstrap_servers=args.broker,
                                group_id=f"plain-{args.prefix}", auto_offset_reset="earliest",
                                max_poll_records=args.batch_max)
    producer = AIOKafkaProducer(bootstrap_servers=args.broker, linger_ms=5)
    await consumer.start()
    await producer.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=args.batch_wait_ms, max_records=args.batch_max)
            events: list[Event] = []
            for records in batches.values():
                for r in records:
                    ev = decode_event(r.key, r.value, topic=r.topic, partition=r.partition,
                                      offset=r.offset, prefix=args.prefix)
                    if isinstance(ev, Event):
                        events.append(ev)
            if not events:
                continue
            states = {}
            for ev in events:
                if ev.user_id not in states:
                    raw = db.get(user_key(ev.user_id))
                    if raw is not None:
                        states[ev.user_id] = decode_state(raw)
            preds = await loop.run_in_executor(None, scorer.score_batch, states, events)
            for uid, st in states.items():
                db[user_key(uid)] = encode_state(st)
            now = int(time.time() * 1000)
            for p, value in zip(preds, encode_predictions(preds, now)):
                await producer.send(settings.predictions_topic, key=user_key(p.user_id), value=value)
    finally:
        await consumer.stop()
        await producer.stop()
        db.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--broker", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--batch-max", type=int, default=512)
    p.add_argument("--batch-wait-ms", type=int, default=20)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
