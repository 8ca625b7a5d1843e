"""Per-epoch data wait in the profiling JSON: what shows the frame cache at work in a real run."""

from __future__ import annotations

import time

from app.profiler import Profiler


def test_report_sums_data_wait_per_epoch():
    prof = Profiler("qlora", use_cuda=False)
    waits = [[0.004, 0.001], [0.0, 0.002, 0.0]]
    for epoch in waits:
        prof.epoch_begin()
        for seconds in epoch:
            prof.timer.start("step")
            prof.timer.start("data_wait")
            time.sleep(seconds)
            prof.timer.stop("data_wait")
            prof.timer.stop("step")
            prof.step_end()
        prof.epoch_end()
    report = prof.report()
    got = report["epoch_data_wait_seconds"]
    assert len(got) == 2 and len(report["epoch_wall_seconds"]) == 2
    assert got == [sum(report["raw"]["steps"]["data_wait"][:2]), sum(report["raw"]["steps"]["data_wait"][2:])]
    assert got[0] >= 0.005 and got[1] >= 0.002
