"""Cost of a run, measured the same way for training and evaluation.

Timers: CUDA events on GPU (they time the GPU work itself, without a sync inside the region), and
`time.perf_counter` on CPU, where kernels are synchronous. Per optimizer step we keep step, forward,
backward, optimizer and data-wait seconds, plus tokens (non-pad, vision tokens included) and samples; the
JSON gets mean / median / p95 / min / max of each and the raw lists, which the tracker turns into
histograms.

Under torchrun every rank profiles itself and `report()` (a collective: every rank calls it) gathers the
ranks' totals: tokens, samples and throughput are global (all ranks' tokens over the slowest rank's busy
time), peak memory is per rank with max and mean; timing distributions and raw lists stay rank 0's.
"""

from __future__ import annotations

import os
import resource
import socket
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from app import distributed

REGIONS = ("step", "forward", "backward", "optimizer", "data_wait")


def summarize(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "median": None, "p95": None, "min": None, "max": None, "count": 0}
    ordered = sorted(values)
    # "inverted_cdf" is the nearest-rank p95: an observed value, never an interpolation between two steps.
    p95 = float(np.percentile(ordered, 95, method="inverted_cdf"))
    return {
        "mean": statistics.fmean(ordered),
        "median": statistics.median(ordered),
        "p95": p95,
        "min": ordered[0],
        "max": ordered[-1],
        "count": len(ordered),
    }


def peak_host_rss_bytes() -> int:
    # ru_maxrss is KiB on Linux; the high-water mark of this process (children are counted by workers).
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(own) * 1024


class RegionTimer:
    """Accumulates named regions inside one step; `flush()` returns seconds per region."""

    def __init__(self, use_cuda: bool):
        self.use_cuda = use_cuda
        self._open: dict[str, Any] = {}
        self._done: list[tuple[str, Any, Any]] = []

    def start(self, name: str) -> None:
        if self.use_cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self._open[name] = ev
        else:
            self._open[name] = time.perf_counter()

    def is_open(self, name: str) -> bool:
        return name in self._open

    def stop(self, name: str) -> None:
        begin = self._open.pop(name, None)
        if begin is None:
            return
        if self.use_cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
        else:
            end = time.perf_counter()
        self._done.append((name, begin, end))

    def flush(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.use_cuda and self._done:
            torch.cuda.synchronize()
        for name, begin, end in self._done:
            seconds = begin.elapsed_time(end) / 1000.0 if self.use_cuda else end - begin
            out[name] = out.get(name, 0.0) + seconds
        self._done.clear()
        return out


@dataclass
class Profiler:
    """Collects per-step figures; `report()` is the profiling JSON of the file contract."""

    mode: str
    use_cuda: bool = field(default_factory=torch.cuda.is_available)
    regions: tuple[str, ...] = REGIONS
    steps: dict[str, list[float]] = field(default_factory=dict)
    tokens: list[int] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    # Data-wait seconds summed per epoch: with the frame cache, epoch 1 decodes and later epochs read.
    epoch_data_wait: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.steps = {k: [] for k in self.regions}
        self.timer = RegionTimer(self.use_cuda)
        self._t0 = time.perf_counter()
        self._epoch_t0: float | None = None
        self._epoch_first_step = 0
        self._step_tokens = 0
        self._step_samples = 0
        if self.use_cuda:
            torch.cuda.reset_peak_memory_stats()

    @property
    def timer_name(self) -> str:
        return "cuda_event" if self.use_cuda else "perf_counter"

    def count_batch(self, batch: dict[str, Any]) -> None:
        mask = batch.get("attention_mask")
        ids = batch.get("input_ids")
        if mask is not None:
            self._step_tokens += int(mask.sum())
        elif ids is not None:
            self._step_tokens += int(ids.numel())
        if ids is not None:
            self._step_samples += int(ids.shape[0])

    def count(self, tokens: int, samples: int) -> None:
        self._step_tokens += tokens
        self._step_samples += samples

    def epoch_begin(self) -> None:
        self._epoch_t0 = time.perf_counter()
        self._epoch_first_step = len(self.steps[self.regions[0]])

    def epoch_end(self) -> None:
        if self._epoch_t0 is not None:
            self.epoch_seconds.append(time.perf_counter() - self._epoch_t0)
            self._epoch_t0 = None
            if "data_wait" in self.steps:
                self.epoch_data_wait.append(sum(self.steps["data_wait"][self._epoch_first_step:]))

    def step_end(self) -> dict[str, float]:
        """Close the step: store its regions, tokens and samples; returns this step's figures."""
        regions = self.timer.flush()
        # Backward is timed as forward+backward minus forward: the Trainer calls backward inside
        # `training_step`, and the forward part is the only piece we can wrap on its own.
        if "forward_backward" in regions:
            regions["backward"] = max(0.0, regions.pop("forward_backward") - regions.get("forward", 0.0))
        for name in self.regions:
            self.steps[name].append(regions.get(name, 0.0))
        self.tokens.append(self._step_tokens)
        self.samples.append(self._step_samples)
        self._step_tokens = self._step_samples = 0
        return regions

    def _rank_summary(self) -> dict[str, Any]:
        return {
            "rank": distributed.rank(),
            "host": socket.gethostname(),
            "num_steps": len(self.steps[self.regions[0]]),
            "num_tokens": sum(self.tokens),
            "num_samples": sum(self.samples),
            "region_seconds": {name: sum(self.steps[name]) for name in self.regions},
            "total_wall_seconds": time.perf_counter() - self._t0,
            "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated() if self.use_cuda else None,
            "peak_host_rss_bytes": peak_host_rss_bytes(),
        }

    def report(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The profiling JSON. Under several processes every rank must call it (it gathers); all get it."""
        ranks = distributed.all_gather_objects(self._rank_summary())
        tokens = sum(r["num_tokens"] for r in ranks)
        samples = sum(r["num_samples"] for r in ranks)
        # Ranks work in parallel: the global rate is all their work over the longest busy time (the whole-step
        # region comes first), so set-up and final saving don't dilute it.
        busy = max(r["region_seconds"][self.regions[0]] for r in ranks)
        gpu = [r["peak_gpu_memory_bytes"] for r in ranks if r["peak_gpu_memory_bytes"] is not None]
        rss = [r["peak_host_rss_bytes"] for r in ranks]
        return {
            "mode": self.mode,
            "timer": self.timer_name,
            "device": torch.cuda.get_device_name() if self.use_cuda else "cpu",
            "world_size": len(ranks),
            "total_wall_seconds": max(r["total_wall_seconds"] for r in ranks),
            "epoch_wall_seconds": list(self.epoch_seconds),
            "epoch_data_wait_seconds": list(self.epoch_data_wait),
            "num_steps": len(self.steps[self.regions[0]]),
            "num_tokens": tokens,
            "num_samples": samples,
            "tokens_per_second": tokens / busy if busy else None,
            "samples_per_second": samples / busy if busy else None,
            **{f"{name}_seconds": summarize(self.steps[name]) for name in self.regions},
            # The max is what must fit on one device; the mean shows imbalance between ranks beside it.
            "peak_gpu_memory_bytes": max(gpu) if gpu else None,
            "peak_gpu_memory_bytes_max": max(gpu) if gpu else None,
            "peak_gpu_memory_bytes_mean": statistics.fmean(gpu) if gpu else None,
            "peak_host_rss_bytes": max(rss),
            "peak_host_rss_bytes_max": max(rss),
            "peak_host_rss_bytes_mean": statistics.fmean(rss),
            "per_rank": ranks,
            "pid": os.getpid(),
            "raw": {"steps": self.steps, "tokens": self.tokens, "samples": self.samples},
            **(extra or {}),
        }
