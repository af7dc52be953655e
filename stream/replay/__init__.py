"""Replay: historical logs -> the input topics (kafka-python producer), for `seqstream replay`.

Every event goes to `input_topic(action, prefix)`, keyed by `user_key(user_id)`, with value
`encode_value(ev)`, in file order. Kafka keeps order per partition only; the three input topics
are co-partitioned and keyed by user, so each user's events stay in order *within* each topic.
Order across topics is the worker's job (it orders by event time). The producer is idempotent
(acks=all), which keeps per-partition order even with several requests in flight and retries.

Pacing: `--speed max` sends as fast as the broker takes it; `--speed F` paces by event time so
that (ts - ts0) / F ~= wall time elapsed (F=60: an hour of log per minute).

Resuming: a checkpoint file (default FILE.replay-checkpoint.json) records `position`, the number
of input events (as `read_events` yields them, in file order) that are settled: sent and
acknowledged, or filtered out by --from/--to. It is written only after `producer.flush()` has
returned with no failed send, so everything before `position` is durably in Kafka and nothing
after it has been counted. `--resume` skips exactly `position` events: no duplicates and
nothing missed. Checkpoints are written every `--checkpoint-every` events, at the end, and on
Ctrl-C (the first Ctrl-C stops cleanly after flushing; a second one aborts).

Several producers (`--producers N`, `--speed max` only): N lanes, forked processes, each
sending the events of the partitions p with p % N == k (lanes.py). Lanes advance
at their own pace, so the checkpoint also keeps one position per lane (`lanes`): lane k's events
before lanes[k] are settled, and `position` = min(lanes) stays a safe answer for a reader that
knows nothing of lanes. A lanes checkpoint resumes each lane from its own position, with the
checkpoint's lane count; one producer (a paced speed, --limit) resuming it skips exactly the
settled events (`settled_in_lanes`). The same guarantee holds: no duplicates, nothing missed.

Modules, each importing only those above it: `options` (ReplayOptions, flag values,
ReplayError), `checkpoint` (ReplayCheckpoint: the resume progress file), `producer` (Replayer),
`loop` (replay_events: pacing, limits, Ctrl-C), `lanes` (several producers), `file`
(replay_file: one log file with checkpoints, one producer or lanes).
"""
