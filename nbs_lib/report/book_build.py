"""``make book``: execute the chapters at a profile into ``book/``, in one lane or several.

For each chapter: a progress line with an estimate of what is left
(:func:`~nbs_lib.report.run_times.progress_line`), papermill with ``NBS_PUBLISH=1`` (only
this build writes ``book/results``), the executed copy tidied
(:mod:`nbs_lib.report.notebooks`), and its row in ``book/results/run_times.csv``.

With ``lanes > 1`` (``make book LANES=2``) the chapters wait in one queue, in book order,
and each lane takes the next one when it is free. A lane's torch gets ``cores // lanes``
threads: on two cores one thread per process runs at about 0.9x the speed of two, so two
lanes nearly double what a build does per hour (benchmarks/RESULTS.md). Lanes share the
run cache, whose entry locks (:meth:`~nbs_lib.core.runs.RunCache.exclusive`) let no model or
attack be computed twice: a lane that needs what another is computing waits for it.
Each lane's papermill output goes to ``scratch/logs/<chapter>.log``; one lane prints it.

Command line::

    python -m nbs_lib.report.book_build --profile mini --lanes 2 notebooks/*.ipynb
"""

from __future__ import annotations

import argparse
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from nbs_lib.report import run_times
from nbs_lib.report.notebooks import tidy_executed
from nbs_lib.report.results import PUBLISH_VARIABLE, REPO_ROOT

BOOK = REPO_ROOT / "book"
LOGS = REPO_ROOT / "scratch" / "logs"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_RECORD_LOCK = threading.Lock()  # the lanes write run_times.csv one at a time


def lane_environment(lanes: int, cores: int | None = None) -> dict:
    """The environment of a chapter's process: publishing on, and one lane's share of the cores."""
    env = {**os.environ, PUBLISH_VARIABLE: "1"}
    if lanes > 1:
        threads = str(max(1, (cores or os.cpu_count() or 1) // lanes))
        env.update({name: threads for name in THREAD_VARIABLES})
    return env


def papermill_command(notebook: Path, profile: str) -> list[str]:
    """papermill executing ``notebook`` into ``book/`` at ``profile``."""
    return [sys.executable, "-m", "papermill", str(notebook), str(BOOK / notebook.name), "-p", "profile", profile,
            "--progress-bar", "--log-output"]


def run_chapter(notebook: Path, profile: str, build_start: float, later: list[str], lane: int, lanes: int) -> int:
    """Execute one chapter and record its time; papermill's exit status (0: done)."""
    name = notebook.stem
    print(run_times.progress_line(name, later, build_start, lanes=lanes) + (f" [lane {lane}]" if lanes > 1 else ""), flush=True)
    entries = run_times.cache_entries()
    start = time.time()
    command = papermill_command(notebook, profile)
    if lanes > 1:
        LOGS.mkdir(parents=True, exist_ok=True)
        with open(LOGS / f"{name}.log", "w") as log:
            status = subprocess.run(command, env=lane_environment(lanes), stdout=log, stderr=subprocess.STDOUT).returncode
    else:
        status = subprocess.run(command, env=lane_environment(lanes)).returncode
    if status != 0:
        where = f"; its log: scratch/logs/{name}.log" if lanes > 1 else ""
        print(f"== {name} failed (papermill exit status {status}){where}", flush=True)
        return status
    tidy_executed(BOOK / notebook.name)
    seconds = time.time() - start
    with _RECORD_LOCK:
        run_times.record(name, seconds, entries, build_start, profile, lane=lane, started=start - build_start)
    print(f"== {name} done in {seconds:.0f} s", flush=True)
    return 0


def build(notebooks: list[Path], profile: str, lanes: int = 1) -> int:
    """Run every chapter of ``notebooks`` (book order) in ``lanes`` lanes; 0 when all succeeded.

    After a failure no lane starts another chapter (those running finish).
    """
    if lanes < 1:
        raise ValueError(f"lanes must be at least 1; got {lanes}")
    build_start = time.time()
    waiting: queue.Queue = queue.Queue()
    for notebook in notebooks:
        waiting.put(Path(notebook))
    failed = threading.Event()

    def lane_loop(lane: int) -> None:
        while not failed.is_set():
            try:
                notebook = waiting.get_nowait()
            except queue.Empty:
                return
            later = [Path(n).stem for n in list(waiting.queue)]
            if run_chapter(notebook, profile, build_start, later, lane, lanes) != 0:
                failed.set()

    threads = [threading.Thread(target=lane_loop, args=(lane,)) for lane in range(1, lanes + 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(f"== build {'failed' if failed.is_set() else 'done'} after {time.time() - build_start:.0f} s "
          f"of wall time in {lanes} lane(s)", flush=True)
    return 1 if failed.is_set() else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="mini")
    parser.add_argument("--lanes", type=int, default=1)
    parser.add_argument("notebooks", nargs="+", type=Path)
    args = parser.parse_args(argv)
    missing = [str(n) for n in args.notebooks if not n.is_file()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)} (ONLY= takes a name from notebooks/ without .ipynb)")
    return build(args.notebooks, args.profile, args.lanes)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
