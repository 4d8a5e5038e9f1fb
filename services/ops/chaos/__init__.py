"""Chaos run: a steady load of prescriptions while a killer `kill -9`s a random service process every
few seconds and restarts it; then a check of every guarantee the system makes.

Six processes run: consultation-1, prescription-1, inventory-1, inventory-2, courier-1, courier-2.
Simulated couriers deliver most offers, fail some (before and after pickup) and read out a wrong
delivery code now and then; warehouse staff register the warehouses, restock lots and adjust
counts while the load flows. When the load is in, the killer stops, the run waits until every
prescription is final and every consumer group has caught up, and then it checks, from the topics
and from each service's own records:

* every prescription is in exactly one terminal state (and the owning services agree);
* for every warehouse and drug, and for every lot, available + reserved + dispatched + quarantined
  + expired + delivered == received + adjusted; what was restocked was received exactly once;
  delivered stock is exactly what the delivered prescriptions took, quarantined stock exactly what
  undeliverable prescriptions took on the road, and nothing is left reserved or on the road;
* the stock ledger recomputes every lot's figures exactly;
* no prescription reserved twice, nor dispatched more often than it was picked up; each ended with
  the stock movements its outcome calls for (delivered, released, or quarantined);
* every dispatch offer has a unique dispatch id and was acted on once (by the couriers, which
  ignore a re-published offer, and by the courier service);
* consumer lag is back to zero.

`python -m services.ops.chaos --prescriptions 2000` runs it on a throw-away dev stack;
`tests/chaos/test_chaos.py` runs the same code and asserts the report has no violations.

The modules: `run` (one run, start to end), `load` (the hospital, warehouse staff and couriers),
`killer`, `settling` (waiting for the system to drain), `evidence` (reading what happened), `checks`
(the guarantees), `report` and `render` (the figures), `__main__` (the command line).
"""

from .render import render
from .report import ChaosReport, StockRow
from .run import PROCESSES, run_chaos

__all__ = ["PROCESSES", "ChaosReport", "StockRow", "render", "run_chaos"]
