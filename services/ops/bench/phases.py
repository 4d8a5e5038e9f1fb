"""The phases of a run (throughput with the relays, then latency at each paced rate), each on a fresh stack."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from aiokafka.errors import KafkaError

from services.runtime.settings import RuntimeSettings

from ..devstack import DevStack
from ..relay_ceiling import RelayResult, measure_relay_ceiling
from ..simulation import CourierSimulator
from .counters import Counters, increase, records_per_prescription, round_trips_per_prescription, scrape
from .interrupts import STOP_REQUESTED
from .load import signed_prescriptions, submit_burst, submit_paced, typical_prescription_bytes, upstream_producer
from .processes import ProcessSampler
from .render import (
    describe_latency,
    describe_records,
    describe_relay,
    describe_round_trips,
    describe_stored_relay,
    describe_throughput,
    describe_writes,
)
from .results import (
    BenchError,
    BenchOptions,
    LatencyResult,
    PacedRate,
    RunResult,
    StoredRelayResult,
    ThroughputResult,
    rate_label,
)
from .screen import BenchScreen, stage_counters
from .stack import caught_up, deliver_every_offer_once, document_writes, on_fresh_stack, seed, stop_services
from .stats import achieved_rate, cpu_share, hop_latencies_ms, latencies_within, per_prescription, stage_window
from .watch import STAGES, PipelineWatch

WARMUP_TIMEOUT_S = 90.0
#: After a phase, how long the simulated couriers may take to finish the trips they started (their
#: reports go out through a producer that closes with the phase).
COURIER_GRACE_S = 15.0
#: How long the services may take to catch up (projections trail the pipeline) before writes are counted.
CATCH_UP_TIMEOUT_S = 120.0
#: The same after the paced submissions, shorter: a rate far above capacity leaves a backlog that
#: would take minutes, and the counters are then flagged as counted before everyone caught up.
PACED_CATCH_UP_TIMEOUT_S = 30.0


@contextlib.asynccontextmanager
async def flowing_pipeline(
    stack: DevStack, options: BenchOptions, screen: BenchScreen, seed_number: int
) -> AsyncIterator[PipelineWatch]:
    """Seeded, watched, couriers on the road, and warmed up (connections open, groups joined,
    the first messages through every hop) before anything is timed."""
    settings = stack.runtime_settings()
    watch = PipelineWatch()
    watching = asyncio.create_task(watch.follow(settings))
    couriers = CourierSimulator(settings, deliver_every_offer_once())
    couriers.start()
    try:
        await seed(settings, watch)
        await warm_up(settings, watch, options, screen, seed_number)
        yield watch
        await let_couriers_finish(watch)
    finally:
        watching.cancel()
        await couriers.stop()
        await asyncio.gather(watching, return_exceptions=True)


async def let_couriers_finish(watch: PipelineWatch) -> None:
    """Every trip the couriers started ends with a delivery; wait (a little) for those."""
    offered = list(watch.first_seen["dispatched"])
    await watch.wait_for("delivered", offered, time.monotonic() + COURIER_GRACE_S)


async def warm_up(
    settings: RuntimeSettings, watch: PipelineWatch, options: BenchOptions, screen: BenchScreen, seed_number: int
) -> None:
    if not options.warmup:
        return
    messages = signed_prescriptions(settings, options.warmup, seed=seed_number)
    ids = [m.prescription_id for m in messages]
    started = time.monotonic()
    async with (
        upstream_producer(settings) as producer,
        screen.bars({"  warm-up": (len(ids), lambda: watch.count("dispatched", ids))}),
    ):
        await submit_burst(producer, messages)
        arrived = await watch.wait_for("dispatched", ids, started + WARMUP_TIMEOUT_S)
    took = time.monotonic() - started
    if not watch.count("dispatched", ids):
        raise BenchError(f"none of {len(ids)} warm-up prescriptions was dispatched within {WARMUP_TIMEOUT_S:.0f}s")
    screen.step(
        f"warmed up: {watch.count('dispatched', ids)}/{len(ids)} dispatched in {took:.1f}s"
        + ("" if arrived else " [yellow](not all: the pipeline is struggling)[/]")
    )


async def measure_throughput(
    stack: DevStack, sampler: ProcessSampler, options: BenchOptions, screen: BenchScreen, run: int
) -> tuple[ThroughputResult, dict[str, Counters]]:
    """The burst, and the services' counters just before it (after the warm-up)."""
    settings = stack.runtime_settings()
    async with flowing_pipeline(stack, options, screen, options.seed_of(run, "throughput warm-up")) as watch:
        messages = signed_prescriptions(settings, options.count, seed=options.seed_of(run, "throughput"))
        ids = [m.prescription_id for m in messages]
        counters_before = await scrape(stack.http_urls())
        screen.step(f"throughput: publishing {len(ids)} prescriptions at once")
        async with upstream_producer(settings) as producer, screen.bars(stage_counters(watch, ids)):
            cpu_before, started = sampler.cpu_seconds(), time.monotonic()
            send_errors = await submit_burst(producer, messages)
            submit_seconds = time.monotonic() - started
            deadline = time.monotonic() + options.timeout_s
            complete = await watch.wait_for("dispatched", ids, deadline)
            await watch.wait_for("delivered", ids, deadline)
            cpu_after, ended = sampler.cpu_seconds(), time.monotonic()
        stages = watch.counts(ids)
        windows = {stage: stage_window(watch.first_seen[stage], ids, started, ended) for stage in STAGES}
    result = ThroughputResult(
        prescriptions=len(ids),
        submit_seconds=round(submit_seconds, 3),
        stages=stages,
        stage_seconds={stage: round(seconds, 3) for stage, seconds in windows.items()},
        complete=complete,
        send_errors=send_errors,
        cpu_share=cpu_share(cpu_before, cpu_after, ended - started),
        cpu_ms_per_prescription={
            name: round((cpu_after[name] - cpu_before[name]) * 1000 / len(ids), 2)
            for name in cpu_after
            if name in cpu_before and complete
        },
    )
    return result, counters_before


async def measure_latency(
    stack: DevStack, options: BenchOptions, screen: BenchScreen, run: int, rate: PacedRate, per_s: float
) -> tuple[LatencyResult, dict[str, Counters]]:
    """The paced submissions, and the services' counters just before them (after the warm-up)."""
    settings = stack.runtime_settings()
    rate_index = options.rates.index(rate)
    warm_up_seed = options.seed_of(run, "latency warm-up", rate_index)
    async with flowing_pipeline(stack, options, screen, warm_up_seed) as watch:
        seconds = options.paced_seconds_at(per_s)
        count = max(1, round(per_s * seconds))
        messages = signed_prescriptions(settings, count, seed=options.seed_of(run, "latency", rate_index))
        ids = [m.prescription_id for m in messages]
        submitted_at: dict[str, float] = {}
        counters_before = await scrape(stack.http_urls())
        label = rate_label(rate.key, per_s)
        screen.step(f"latency at {label}: {count} prescriptions at {per_s:g}/s for {seconds:g}s")
        counters = {"  submitted": (count, lambda: len(submitted_at)), **stage_counters(watch, ids)}
        async with upstream_producer(settings) as producer, screen.bars(counters):
            send_errors = await submit_paced(producer, messages, per_s, submitted_at)
            await watch.wait_for("dispatched", ids, max(submitted_at.values()) + options.timeout_s)
        latencies, missing = latencies_within(submitted_at, watch.first_seen["dispatched"], options.timeout_s)
        stages = watch.counts(ids)
        hops = hop_latencies_ms(submitted_at, watch.first_seen, STAGES[:-1])  # delivery: the simulated couriers
    result = LatencyResult(
        rate_key=rate.key,
        target_rate=per_s,
        planned_seconds=seconds,
        timeout_s=options.timeout_s,
        submitted=len(submitted_at),
        achieved_rate=achieved_rate(submitted_at.values()),
        latencies_ms=latencies,
        missing=missing,
        stages=stages,
        send_errors=send_errors,
        hop_ms={stage: [round(ms, 2) for ms in values] for stage, values in hops.items()},
    )
    return result, counters_before


async def measure_relay(
    stack: DevStack,
    options: BenchOptions,
    screen: BenchScreen,
    message_bytes: int,
    while_driving: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
) -> RelayResult:
    """The bare relay, or with `while_driving` (entered while messages flow) the stored relay."""
    stored = while_driving is not None
    messages = options.stored_relay_messages if stored else options.relay_messages
    name, hops = ("stored relay", "4 hops storing each one") if stored else ("relay ceiling", "4 bare hops")
    screen.step(f"{name}: {messages} messages of {message_bytes} bytes through {hops}")
    relayed = 0

    def progress(count: int) -> None:
        nonlocal relayed
        relayed = count

    async with screen.bars({"  relayed": (messages, lambda: relayed)}):
        return await measure_relay_ceiling(
            stack.bootstrap,
            messages=messages,
            message_bytes=message_bytes,
            partitions=stack.partitions,
            timeout_s=options.timeout_s,
            mongo_url=stack.runtime_settings().mongo_url.get_secret_value() if stored else None,
            log_dir=stack.logs,
            progress=progress,
            while_driving=while_driving or contextlib.nullcontext,
        )


async def counted_since(stack: DevStack, before: dict[str, Counters]) -> dict[str, Counters]:
    """What each service process counted since `before` (a process that did not answer is left out)."""
    return {name: increase(before.get(name, {}), after) for name, after in (await scrape(stack.http_urls())).items()}


def group_prefix(stack: DevStack, options: BenchOptions) -> str:
    """The services' consumer-group prefix (their group labels carry it)."""
    return options.service_env.get("PHARMACY_KAFKA_GROUP_PREFIX", stack.runtime_settings().kafka_group_prefix)


def throughput_phase(run: RunResult, options: BenchOptions, screen: BenchScreen) -> None:
    async def body(stack: DevStack, sampler: ProcessSampler) -> None:
        run.throughput, counters_before = await measure_throughput(stack, sampler, options, screen, run.number)
        run.peak_rss_mb["throughput"] = sampler.peak_rss_mb()
        screen.step(describe_throughput(run.throughput))
        settled = await caught_up(stack.runtime_settings(), CATCH_UP_TIMEOUT_S)
        counted = await counted_since(stack, counters_before)
        prefix = group_prefix(stack, options)
        run.round_trips_per_prescription = round_trips_per_prescription(counted, options.count, prefix)
        run.records_per_prescription = records_per_prescription(counted, options.count, prefix)
        screen.step(describe_round_trips(run.round_trips_per_prescription, settled))
        screen.step(describe_records(run.records_per_prescription, settled))
        # Same broker, services stopped: a relay must not share two cores with idle pollers.
        await asyncio.to_thread(stop_services, stack)
        sent = options.count + options.warmup
        run.writes_per_prescription = per_prescription(await document_writes(stack.runtime_settings()), sent)
        run.writes_complete = settled and run.throughput.complete
        screen.step(describe_writes(run.writes_per_prescription, run.writes_complete))
        message_bytes = typical_prescription_bytes(stack.runtime_settings())
        if options.relay_messages:
            run.relay = await measure_relay(stack, options, screen, message_bytes)
            screen.step(describe_relay(run.relay, run.throughput))
        if options.stored_relay_messages:
            database_cpu: list[float] = []

            @contextlib.contextmanager
            def database_cpu_while_driving() -> Iterator[None]:
                database_cpu.append(sampler.cpu_seconds().get("database", 0.0))
                yield
                database_cpu.append(sampler.cpu_seconds().get("database", 0.0))

            stored = await measure_relay(stack, options, screen, message_bytes, database_cpu_while_driving)
            spent = database_cpu[-1] - database_cpu[0] if len(database_cpu) == 2 else 0.0
            run.stored_relay = StoredRelayResult(stored, round(spent, 3))
            screen.step(describe_stored_relay(run.stored_relay, run.throughput))

    on_fresh_stack(options.home / f"run-{run.number}-throughput", options, screen, body)


def latency_phase(run: RunResult, options: BenchOptions, screen: BenchScreen, rate: PacedRate) -> None:
    per_s = rate.resolve(run.throughput.dispatched_per_s if run.throughput else None)
    if per_s is None:
        raise BenchError("this run measured no throughput to take half of")
    counts_round_trips = rate == options.round_trips_rate

    async def body(stack: DevStack, sampler: ProcessSampler) -> None:
        latency, counters_before = await measure_latency(stack, options, screen, run.number, rate, per_s)
        run.latencies[rate.key] = latency
        run.peak_rss_mb[f"latency {latency.label}"] = sampler.peak_rss_mb()
        screen.step(describe_latency(latency))
        if not counts_round_trips:  # the catch-up wait would only lengthen the run
            return
        # Round trips depend on how many records a batch holds: paced, batches are small.
        settled = await caught_up(stack.runtime_settings(), PACED_CATCH_UP_TIMEOUT_S)
        counted = await counted_since(stack, counters_before)
        submitted = max(1, latency.submitted)
        run.paced_round_trips_per_prescription = round_trips_per_prescription(
            counted, submitted, group_prefix(stack, options)
        )
        run.paced_round_trips_rate = latency.label
        run.paced_counters_complete = settled
        screen.step(
            f"paced at {latency.label}: " + describe_round_trips(run.paced_round_trips_per_prescription, settled)
        )

    on_fresh_stack(options.home / f"run-{run.number}-latency-{rate.key.removesuffix('/s')}", options, screen, body)


def run_once(run: RunResult, options: BenchOptions, screen: BenchScreen) -> None:
    """Every phase of a run; a phase that fails is recorded in `run.errors` and the others still run."""
    phases: list[tuple[str, Callable[[], None]]] = [("throughput", lambda: throughput_phase(run, options, screen))]
    for rate in options.rates:
        phases.append((f"latency at {rate.key}", lambda rate=rate: latency_phase(run, options, screen, rate)))
    for name, phase in phases:
        screen.step(f"[bold]run {run.number}/{options.runs} · {name}[/]")
        try:
            phase()
        except (BenchError, KafkaError, OSError, RuntimeError) as error:
            if STOP_REQUESTED.is_set():  # an error while stopping is part of stopping
                raise KeyboardInterrupt from error
            # TimeoutError is an OSError: a stack that would not start is a result too, not a crash.
            run.errors.append(f"{name}: {error}")
            screen.step(f"[red]{name} phase failed:[/] {error}")
