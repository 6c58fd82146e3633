"""This process's resident memory and its peak, polled on a thread: what StepTimer and the
workloads record as the peak RSS of a fit, without importing torch or Lightning."""

import os
import threading

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """Resident set size of this process, from /proc (cheap enough to poll every 50 ms)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRSS:
    """Polls this process's RSS on a daemon thread; ``peak`` is the largest value seen."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self.peak = interval, rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        return self.peak
