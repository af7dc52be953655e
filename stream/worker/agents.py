"""The worker's faust agents and timers, registered on the app: thin wrappers over the pipeline.

- score: micro-batches from the three input topics (`take_ready`, stream/worker/batching.py) -> ScoringPipeline.process
- churn-commands: the sweep's commands, applied by the table's owner (timers cannot write tables)
- timers: release buffered events on a quiet stream, the churn sweep, unsticking lost fetches,
  the metrics report, the health checks' progress sample; the web pages (stream/worker/web.py)
"""
from __future__ import annotations

import logging

from stream.worker.app import Wiring
from stream.worker.batching import take_ready
from stream.worker.pipeline import ScoringPipeline
from stream.worker.web import register_pages

log = logging.getLogger("seqstream.worker")


def register_agents(wiring: Wiring, pipeline: ScoringPipeline, *, report_every_s: float = 10.0) -> None:
    app = wiring.app
    settings = pipeline.settings

    @app.agent(wiring.source, name=f"{settings.app_id}-score")
    async def score(stream):  # noqa: ANN001 - faust's stream type
        async for batch in take_ready(stream, settings.batch_max, settings.batch_wait_ms / 1000.0,
                                      settings.batch_idle_ms / 1000.0):
            try:
                await pipeline.process(batch)
            except Exception:
                # take_events acks the batch anyway; make the loss loud rather than silent
                log.exception("batch of %d events failed after scoring", len(batch))

    @app.agent(wiring.churn_commands, name=f"{settings.app_id}-churn-commands")
    async def churn_commands(stream):  # noqa: ANN001
        async for fev in stream.events():
            await pipeline.apply_churn_command(fev)

    @app.timer(interval=max(settings.batch_wait_ms / 1000.0, 0.01))
    async def release_buffered() -> None:
        # a quiet stream delivers no batch, but caught-up partitions can release held events
        if pipeline.reorder.size:
            await pipeline.release_ready()

    @app.task
    async def patch_consumer() -> None:
        # patched once the app runs (app.consumer created earlier would turn transactions off)
        pipeline.fetch_watch.hand_back_before_waiting(pipeline.hand_back)
        pipeline.fetch_watch.guard_commits()

    @app.on_partitions_assigned.connect
    async def assigned(app_, assigned, **kwargs) -> None:  # noqa: ANN001
        await pipeline.on_assigned(assigned)

    @app.on_partitions_revoked.connect
    async def revoked(app_, revoked, **kwargs) -> None:  # noqa: ANN001
        pipeline.on_revoked(revoked)

    @app.timer(interval=settings.churn_sweep_s)
    async def churn_sweep() -> None:
        await pipeline.sweep()

    @app.timer(interval=1.0)
    async def unstick_inputs() -> None:
        # faust's losses that would leave records unscored for good (see FetchWatch.unstick)
        await pipeline.fetch_watch.unstick(pipeline.in_transit)
        pipeline.health.tick()

    @app.timer(interval=report_every_s)
    async def report() -> None:
        watch = pipeline.fetch_watch
        # faust's backpressure: input partitions it stopped fetching because a stream buffer
        # was full (they come back when the buffer drains)
        paused = sorted(f"{tp.topic}[{tp.partition}]" for tp in watch.backpressured())
        log.info("seqstream metrics %s backpressured=%s lag=%s", pipeline.metrics.snapshot(), paused,
                 watch.input_lag())

    register_pages(wiring, pipeline)  # /metrics, /healthz, /readyz, /feed, / (when web_port > 0)
