"""Where `trawl report`'s wall time goes between its two threads (the main thread and the generations
read-ahead), and what it would take on an idle 2-core machine.

    PYTHONPATH=. python benchmarks/report_threads.py RUN [--without-text-work] [--pairs N]

One `compute_metrics(RUN)` per process. Inside it, `time.thread_time` of the main thread is taken
around the whole call and around `read_generations`. The read-ahead thread's CPU is `process_time`
minus the main thread's over `read_generations`. The estimate is main-thread CPU outside the stream +
max(main-thread CPU in the stream, read-ahead CPU): the wall time when each thread has a core of its
own and they do not wait on each other for the GIL. The wall time itself is useless for this on a
loaded machine. `--without-text-work` leaves the per-text work to the end (the TextWork hook off, as
before it existed). `--pairs N` alternates N processes with and N without it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def one(run: str, without: bool) -> dict:
    import reports.metrics as rm
    import reports.passes as ps
    import reports.texts as rt
    if without:
        rt.TextWork.__call__ = lambda self, acc: None
    inner = ps.read_generations
    seen: dict = {}

    def timed(*a, **k):
        t, c, p = time.perf_counter(), time.thread_time(), time.process_time()
        r = inner(*a, **k)
        seen.update(wall=time.perf_counter() - t, main=time.thread_time() - c, proc=time.process_time() - p)
        return r
    rm.read_generations = timed
    t0, c0, p0 = time.perf_counter(), time.thread_time(), time.process_time()
    rm.compute_metrics(run)
    wall, main_all, proc_all = time.perf_counter() - t0, time.thread_time() - c0, time.process_time() - p0
    serial, helper = main_all - seen["main"], seen["proc"] - seen["main"]
    return {"text_work_in_stream": not without, "wall_s": round(wall, 2), "cpu_s": round(proc_all, 2),
            "main_outside_stream_s": round(serial, 2), "main_in_stream_s": round(seen["main"], 2),
            "read_ahead_s": round(helper, 2), "idle_2core_estimate_s": round(serial + max(seen["main"], helper), 2),
            "load": os.getloadavg()[0]}


def main() -> None:
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    run, without = args[0], "--without-text-work" in args
    if "--pairs" in args:
        n = int(args[args.index("--pairs") + 1])
        for i in range(n):
            for w in ((False, True) if i % 2 == 0 else (True, False)):
                cmd = [sys.executable, __file__, run] + (["--without-text-work"] if w else [])
                print(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip(), flush=True)
        return
    print(json.dumps(one(run, without)))


if __name__ == "__main__":
    main()
