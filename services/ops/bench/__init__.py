"""`make bench`: how fast prescriptions go end to end on the dev stack, and how close that is to
what the broker allows.

Each run has a throughput phase and a latency phase per paced rate, each on a dev stack of its
own (free ports, home under `.devstack/bench`, the four services as processes; formulary,
prescribers, interactions, couriers with room for every delivery, the warehouses and 10^7 units
of every drug they stock seeded), so no phase inherits another's backlog, broker memory or
database size. Prescription ids also differ per phase. Only prescriptions the checks approve are
sent (none faulty, none for a patient allergic to the drug). Simulated couriers deliver every
offer at once, with the patient's delivery code.

1. **Throughput.** N signed prescriptions (none faulty) published at once through one producer;
   prescriptions per second from the first submission until N distinct prescriptions have been
   offered to a courier (`DispatchOffered` on `courier.dispatch.v1`), and until N were delivered.
   Once every consumer group has caught up, the documents the services wrote are counted (writes
   per prescription, per collection), and so are what the services counted themselves since the
   burst began, read from each one's /metrics: database round trips per consumer group (on the
   path to `DispatchOffered` and in all) and records delivered per group, with those delivered to
   a group that ignores them (`counters.py`). Then, on the same broker with the services stopped, the
   bare four-hop relay (`relay_ceiling.py`), the ceiling any four-hop pipeline here could reach;
   ours / ceiling. And the stored relay: the same four hops, each also storing every message as a
   document in the same database, the ceiling of a pipeline whose four services persist each
   prescription once. The database's CPU per document it stored is the least a write costs here.
2. **Latency**, once per rate of `--rates` (by default 5/s, 20/s, and half the throughput the
   same run measured). Prescriptions submitted at that rate (absolute schedule, no drift); for each,
   submission → first dispatch offer consumed. p50, p95, p99, max; those not dispatched within
   `--timeout` of their submission are counted as missing, never dropped. p99 is held to its
   target at 20/s. The services' database round trips per prescription are also counted at 5/s
   (else at the first rate), where no two prescriptions share a batch.

Peak RSS of every process is sampled every 0.2 s, and CPU time per process over the throughput
window shows where the work goes. Stage counts (accepted, approved, reserved, dispatched,
delivered) are read from the topics, so a slow run shows which service holds the backlog.
Medians over `--runs` runs are reported against the targets; every run's figures are kept in the
JSON. The stack is always torn down, also on Ctrl-C, SIGTERM or an error.

The modules: `stack` (a seeded dev stack per phase), `load` (signed prescriptions, sent at once or
paced), `watch` (milestones seen on the topics), `processes` (RSS and CPU), `counters` (the services'
own counters, scraped from /metrics), `stats` (the arithmetic), `phases` (what a run does),
`results`, `render` and `report` (what it found), `cli` (the command line).

`python -m services.ops.bench --count 200 --paced-seconds 3 --rates 20 --runs 1` is a quick look.
"""
