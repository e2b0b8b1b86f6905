"""Ray's own output goes to RUN/ray.log; each command prints its own progress, once.

Left alone, Ray writes to the console from three places: the driver's ``ray`` Python loggers
(start-up notices, the auth-token warning), the stdout/stderr of every worker and actor, which Ray
forwards to the driver (Ray Train's controller and worker chatter, its placement-group cleaner that
retries the State API about every second when the dashboard is off, tracebacks of Ray internals),
and Ray Train's patched ``print`` in its workers, which sends every printed line to the console
twice (stdout, and stderr through its logger). ``ray_session`` sends the first two to the log file,
and gives the training loops a ``progress`` sink instead of ``print``: rank 0 puts its progress lines
into a Ray queue, and a driver thread prints them, once. ``simpersona --verbose`` puts Ray's lines
back on the console (they still go to the file as well).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

LOG_FILE = "ray.log"
# ray._private.worker.connect registers its console printer of forwarded worker output under this
# name (and disconnect removes it by the same name); ours writes the same batches to the file.
RAY_PRINT_HANDLER = "ray_print_logs"
FILE_HANDLER = "simpersona_ray_log"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass
class RaySession:
    """What a command gets inside ``ray_session``."""

    log_path: Path
    """The file Ray's own output goes to."""
    relay: _Relay | None = None

    @property
    def progress(self) -> Callable[[str], None]:
        """A picklable sink for progress lines written inside Ray workers (rank 0): they are printed
        on this console once. Its queue actor starts on first use (simulate has no use for one)."""
        if self.relay is None:
            self.relay = _Relay()
        return self.relay.queue.put


@contextmanager
def ray_session(out: str | Path, verbose: bool = False, address: str | None = None) -> Iterator[RaySession]:
    """Ray's logs to ``OUT/ray.log`` (also on the console with ``verbose``) for the block's duration.

    Ray is initialised here (at ``address``, else ``RAY_ADDRESS``, else a new local instance), so that
    the worker output it forwards can be routed, and shut down at the end; the libraries called
    inside find it running and use it. When Ray is already running (a caller's instance), its
    forwarding is left as its owner set it and only the driver's loggers are routed.
    """
    path = Path(out) / LOG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    # Said once, before Ray can write anything, so a reader knows where the rest went.
    print(
        f"Ray logs: {path}" + ("" if verbose else "  (simpersona --verbose shows them here too)"), flush=True
    )
    with open(path, "a", encoding="utf-8", buffering=1) as file:
        file.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} simpersona {' '.join(sys.argv[1:])}\n")
        import ray

        undo_loggers = _route_loggers(file, verbose)
        session = RaySession(path)
        started = False
        try:
            if not ray.is_initialized():
                ray.init(
                    address=address or os.environ.get("RAY_ADDRESS", "local"),
                    include_dashboard=False,
                    log_to_driver=True,
                )
                started = True
                _route_forwarded_output(file, verbose)
            yield session
        finally:
            if session.relay is not None:
                session.relay.close()
            if started:
                ray.shutdown()
                _unroute_forwarded_output()
            undo_loggers()


def _route_loggers(file: IO[str], verbose: bool) -> Callable[[], None]:
    """Point the driver's ``ray`` / ``ray.*`` loggers at ``file``; returns the undo.

    Importing ray, and ray.data, gives their loggers console handlers of their own; both are
    imported here (ray.train imports ray.data anyway) so that a later import cannot add one.
    """
    import ray.data  # noqa: F401

    handler = logging.StreamHandler(file)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    # What Ray's console handlers let through: ray.data logs DEBUG to its own session file.
    handler.setLevel(logging.INFO)
    changed: list[tuple[logging.Logger, list[logging.Handler]]] = []
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger) or not (name == "ray" or name.startswith("ray.")):
            continue
        if not logger.handlers:
            continue  # propagates to "ray", which is routed
        before = list(logger.handlers)
        consoles = [h for h in before if _is_console(h)]
        if not verbose:
            for h in consoles:
                logger.removeHandler(h)
        logger.addHandler(handler)
        changed.append((logger, before))

    def undo() -> None:
        for logger, before in changed:
            logger.handlers[:] = before
        handler.flush()

    return undo


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


def _route_forwarded_output(file: IO[str], verbose: bool) -> None:
    """Workers' and actors' forwarded stdout/stderr to ``file`` (and, verbose, to the console)."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    from ray._private.worker import filter_autoscaler_events
    from ray.experimental.tqdm_ray import RAY_TQDM_MAGIC

    def write(batch: dict) -> None:
        lines = batch.get("lines", [])
        if batch.get("pid") == "autoscaler":
            # Its raw monitor log repeats the cluster status every few seconds; Ray's console
            # printer keeps only the events, and so does the file.
            lines = filter_autoscaler_events(lines)
        source = batch.get("actor_name") or batch.get("task_name") or ""
        prefix = f"({source} pid={batch.get('pid')}{' stderr' if batch.get('is_err') else ''}) "
        # tqdm_ray bars are JSON state updates, meaningful only to a live console.
        file.writelines(prefix + line + "\n" for line in lines if RAY_TQDM_MAGIC not in line)

    dispatcher.add_handler(FILE_HANDLER, write)
    if not verbose:
        dispatcher.remove_handler(RAY_PRINT_HANDLER)


def _unroute_forwarded_output() -> None:
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    dispatcher.remove_handler(FILE_HANDLER)


class _Relay:
    """A Ray queue that workers put progress lines into, printed here by a thread, in order."""

    def __init__(self) -> None:
        from ray.util.queue import Queue

        # No CPU: the queue must never wait for, or take, a training worker's slot.
        self.queue = Queue(actor_options={"num_cpus": 0})
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._drain, name="simpersona-progress", daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        from ray.util.queue import Empty

        while not self.stop.is_set():
            try:
                print(self.queue.get(timeout=0.2), flush=True)
            except Empty:
                continue
            except Exception:  # the queue is gone (Ray shut down under us): nothing more will come
                return

    def close(self) -> None:
        from ray.util.queue import Empty

        self.stop.set()
        self.thread.join()
        # put() returns once the line is queued, so whatever the run reported is here now. A queue
        # that died with the run must not hide the run's own error, hence the broad except.
        try:
            while True:
                print(self.queue.get_nowait(), flush=True)
        except Empty:
            self.queue.shutdown()
        except Exception:
            pass


def quiet_model_loading() -> None:
    """No transformers or hub progress bars ("Loading weights") on the console: framework noise.

    The variable reaches a transformers imported later and the Ray workers this process starts."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    elif "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
