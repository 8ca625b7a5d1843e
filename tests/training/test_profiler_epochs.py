"""Per-epoch data wait in the profiling JSON: what shows the frame cache at work in a real run."""

from __future__ import annotations

import time

from app.profiler import Profiler


def test_report_sums_data_wait_per_epoch():
    prof = Profiler("qlora", use_cuda=False)
    waits = [[0.004, 0.001], [0.0, 0.002, 0.0]]
    outside = []  # each epoch's waits as this test times them, around the profiler's own timer
    for epoch in waits:
        prof.epoch_begin()
        spent = 0.0
        for seconds in epoch:
            prof.timer.start("step")
            before = time.perf_counter()
            prof.timer.start("data_wait")
            time.sleep(seconds)
            prof.timer.stop("data_wait")
            spent += time.perf_counter() - before
            prof.timer.stop("step")
            prof.step_end()
        outside.append(spent)
        prof.epoch_end()
    report = prof.report()
    got = report["epoch_data_wait_seconds"]
    assert len(got) == 2 and len(report["epoch_wall_seconds"]) == 2
    for epoch, asked, measured, reported in zip((1, 2), waits, outside, got, strict=True):
        assert sum(asked) <= reported <= measured, (epoch, asked, measured, reported)
