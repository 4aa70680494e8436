"""Measuring helpers shared by the benchmark scripts: peak memory and busy CPU time."""
from __future__ import annotations

import threading

import psutil

MIB = 1 << 20


def busy_cpu_s() -> float:
    """Busy CPU seconds of the whole machine since boot (every process, all cores)."""
    cpu = psutil.cpu_times()
    return sum(cpu) - cpu.idle - getattr(cpu, "iowait", 0.0)


class PeakMemory:
    """Peak memory over a block, sampled in a thread every ``interval_s``.

    ``main``: RSS of this process (``extra_mib``: its peak above the RSS at the start);
    with ``children``, ``workers``: USS (private memory) of its child processes, such as forked
    decoding workers whose shared pages count once, and ``total``: the peak of main + workers.
    """

    def __init__(self, interval_s: float = 0.25, children: bool = False):
        self.interval_s, self.children = interval_s, children
        self.start = self.main = self.workers = self.total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self.start = psutil.Process().memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def extra_mib(self) -> float:
        return round(max(0, self.main - self.start) / MIB, 1)

    def _sample(self) -> None:
        me = psutil.Process()
        while True:
            main = me.memory_info().rss
            workers = 0
            for child in me.children(recursive=True) if self.children else ():
                try:
                    workers += child.memory_full_info().uss
                except psutil.Error:  # exited between listing and reading
                    pass
            self.main, self.workers = max(self.main, main), max(self.workers, workers)
            self.total = max(self.total, main + workers)
            if self._stop.wait(self.interval_s):
                return
