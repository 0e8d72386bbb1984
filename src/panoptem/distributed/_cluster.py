"""The Dask side: a client on a LocalCluster (or a running scheduler), one
worker per device, and running block tasks with a progress bar."""
from __future__ import annotations

import logging
from contextlib import contextmanager

from ..errors import PanoptemError


from distributed.diagnostics.plugin import WorkerPlugin


class _WorkerSetup(WorkerPlugin):
    """Worker plugin: pins each worker to its device, caps its threads at its share of the cores
    and its heap at two malloc arenas (see :func:`panoptem._memory.limit_arenas`)."""

    name = "panoptem-setup"

    def __init__(self, devices: list[str] | None, threads: int, slots_per_host: dict | None = None,
                 quiet_failures: bool = False):
        import os
        self.devices = devices
        self.threads = threads
        self.slots_per_host = slots_per_host or {}  # task slots of a running cluster's workers, by host
        self.caller_pid = os.getpid()
        self.quiet_failures = quiet_failures  # panoptem's own cluster: the caller reports a failed task

    def setup(self, worker):
        import os

        from .._memory import limit_arenas
        from ._source import set_worker_device
        limit_arenas(WORKER_ARENAS)
        if self.quiet_failures and os.getpid() != self.caller_pid:
            logging.getLogger("distributed.worker").addFilter(_not_a_task_failure)
        device = None  # a run without devices leaves no earlier run's device on a worker that outlives it
        if self.devices:
            try:
                i = int(worker.name)
            except (TypeError, ValueError):
                i = abs(hash(worker.name))
            device = self.devices[i % len(self.devices)]
        set_worker_device(device)
        from ..inference.runtime import cpu_count, limit_threads
        threads = self.threads
        slots = self.slots_per_host.get(_host(worker.address))
        if not threads and slots and os.getpid() != self.caller_pid:
            # a worker process of a running cluster: its share of the host's cores (a worker
            # thread in the caller's own process leaves the caller's threads alone)
            threads = max(1, cpu_count() // slots)
        if threads:
            limit_threads(threads)


def _not_a_task_failure(record: logging.LogRecord) -> bool:
    """Logging filter: a worker's dump of a failed task, which the caller raises again (with a
    message for a full disk, a bad input...) on the terminal both share, is left out."""
    return not str(record.msg).startswith("Compute Failed")


def _host(address: str) -> str | None:
    from urllib.parse import urlparse
    return urlparse(address).hostname


def slots_per_host(client) -> dict[str, int]:
    """Task slots (the sum of workers' threads) on each host of the cluster ``client`` is on."""
    try:
        info = client.scheduler_info(n_workers=-1)  # every worker, said explicitly where it can be
    except TypeError:  # older distributed: no such argument, every worker anyway
        info = client.scheduler_info()
    out: dict[str, int] = {}
    for address, w in info["workers"].items():
        out[_host(address)] = out.get(_host(address), 0) + int(w.get("nthreads", 1) or 1)
    return out


def visible_gpus() -> list[str]:
    """``cuda:i`` for every GPU torch sees (none on a CPU machine)."""
    import torch
    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def plan_workers(n_workers: int | None, devices: list[str] | None, bytes_per_worker: int) -> tuple[int, int]:
    """(workers, torch threads per worker) for a local cluster: one worker per
    device; on CPUs as many as cores and memory allow, unless given."""
    from ..inference.runtime import cpu_count
    cores = cpu_count()
    if devices:
        return len(devices), max(1, cores // len(devices))
    if n_workers is None:
        import psutil
        avail = psutil.virtual_memory().available
        n_workers = max(1, min(cores, int(avail * 0.8) // max(bytes_per_worker, 1)))
    check_worker_count(n_workers)
    return n_workers, max(1, cores // n_workers)


#: malloc arenas of a worker process (see :func:`panoptem._memory.limit_arenas`)
WORKER_ARENAS = 2


def local_cluster(n_workers: int, processes: bool = True, **kw):
    """A LocalCluster of ``n_workers`` one-thread workers whose processes start with at most
    :data:`WORKER_ARENAS` malloc arenas (``MALLOC_ARENA_MAX``, unless the environment sets
    it): the plugin's cap comes after the first threads took theirs."""
    import os

    import dask
    from distributed import LocalCluster
    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", None) or {})
    env.setdefault("MALLOC_ARENA_MAX", os.environ.get("MALLOC_ARENA_MAX", str(WORKER_ARENAS)))
    with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=processes, **kw)


#: what to do when worker processes re-run the caller's script (Dask starts them by "spawn")
MAIN_GUARD = ("in a script, put the panoptem call under `if __name__ == \"__main__\":` (Dask's worker "
              "processes import the script again), or pass processes=False or a client of your own")


def check_not_bootstrapping() -> None:
    """Refuse a run started by a worker process while it imports the caller's script (a script
    without a main guard): it would start a run of its own for every worker."""
    import multiprocessing
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise PanoptemError("A panoptem run was started while a worker process imported its script; " + MAIN_GUARD
                            + ".")


def check_scheduler(address: str) -> None:
    """One error for a scheduler address Dask cannot parse (before any work): it needs a
    scheme it knows and a port, as in tcp://host:8786."""
    from distributed.comm.addressing import get_address_host_port, parse_address
    try:
        scheme, _ = parse_address(str(address))
        if scheme not in ("inproc", "ucx"):  # their addresses name no host and port
            get_address_host_port(str(address))
    except (ValueError, TypeError) as e:
        raise PanoptemError(f"--scheduler '{address}' is not a Dask scheduler address ({e}); give one such as "
                            "tcp://host:8786, as the scheduler prints it.") from None
    # schemes a client cannot use here: refused at once (Dask's client would fail, then hang on exit)
    if scheme == "inproc" and not _in_this_process(address):
        raise PanoptemError(f"--scheduler '{address}' names a scheduler inside a Python process, which only that "
                            "process reaches, and it is not this one: give the scheduler's tcp:// address.")
    if scheme == "ucx" and not any(_importable(m) for m in ("distributed_ucxx", "ucp")):
        raise PanoptemError(f"--scheduler '{address}' needs UCX, which is not installed here (distributed-ucxx); "
                            "install it, or give the scheduler's tcp:// address.")
    if scheme == "tls":
        import dask
        if not (dask.config.get("distributed.comm.tls.ca-file", None)  # what Dask's client needs, both
                and dask.config.get("distributed.comm.tls.client.cert", None)):
            raise PanoptemError(f"--scheduler '{address}' speaks TLS, and no TLS settings for Dask's client are "
                                "configured (distributed.comm.tls in Dask's configuration); set them, or give a "
                                "tcp:// address.")


def _in_this_process(address: str) -> bool:
    """Whether an inproc:// scheduler address is one of this process's."""
    from distributed.comm.addressing import parse_address
    from distributed.comm.inproc import global_manager
    try:
        return global_manager.get_listener_for(parse_address(address)[1]) is not None
    except ValueError:
        return False


def _importable(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


def check_cluster(n_workers: int | None, scheduler: str | None, client=None) -> None:
    """One error, before any work, for a cluster asked for in two ways, a scheduler address
    Dask cannot parse or a local worker count out of range."""
    if n_workers is not None and (scheduler is not None or client is not None):
        given = "--scheduler" if scheduler is not None else "a client"
        raise PanoptemError(f"--workers starts local workers, but {given} was given: the blocks run on that "
                            "cluster's own workers. Drop --workers (start more workers on the cluster instead), "
                            "or drop --scheduler to run local workers.")
    if scheduler is not None and client is not None:
        raise PanoptemError("Give a scheduler address or a client, not both.")
    if client is None:
        check_scheduler(scheduler) if scheduler is not None else check_worker_count(n_workers)


def check_worker_count(n_workers: int | None) -> None:
    """One error for a local worker count below 1 or far past the cores (before any work)."""
    if n_workers is None:
        return
    from ..inference.runtime import cpu_count
    most = MAX_WORKERS_PER_CORE * cpu_count()
    if not 1 <= n_workers <= most:
        raise PanoptemError(f"--workers must be from 1 to {most} ({MAX_WORKERS_PER_CORE} per core of this "
                            f"machine), not {n_workers}; local workers past the cores only share them.")


#: the most local workers per core a run starts
MAX_WORKERS_PER_CORE = 4


@contextmanager
def client_for(n_workers: int | None = None, scheduler: str | None = None, devices: list[str] | None = None,
               bytes_per_worker: int = 2 << 30, processes: bool = True, log=None):
    """A distributed client: on ``scheduler`` when given, else on a new
    LocalCluster (closed on exit) with one worker per device or CPU worker."""
    from distributed import Client
    if scheduler is not None:
        check_scheduler(scheduler)
        client = _connect(scheduler)
        # a lost scheduler is told in one line (run_tasks): not with the client's reconnection tracebacks
        quiet = logging.getLogger("distributed.client")
        level, quiet.level = quiet.level, logging.CRITICAL
        try:
            _wait_for_a_worker(client, scheduler, log)
            with _scheduler_answers(client, "setting up its workers"):
                _set_up_workers(client, devices)
                n = len(client.scheduler_info()['workers'])
            if log:
                log(f"dask: scheduler {scheduler}, {n} worker(s)")
            yield client
        finally:
            client.close()
            quiet.setLevel(level)
        return
    if devices and len(set(devices)) > 1 and not processes:
        raise PanoptemError("One worker per device needs worker processes: threads of one process share one "
                            "device; leave processes at True (the default) with devices.")
    n, threads = plan_workers(n_workers, devices, bytes_per_worker)
    try:
        cluster = local_cluster(n, processes=processes, dashboard_address=":0", silence_logs=logging.ERROR)
    except RuntimeError as e:  # "Nanny failed to start": a worker process died while starting
        raise PanoptemError(f"Dask could not start its worker processes ({str(e).rstrip('.')}; the workers' "
                            "errors are above); " + MAIN_GUARD + ".") from e
    client = Client(cluster)
    try:
        client.register_plugin(_WorkerSetup(devices, threads if processes else 0, quiet_failures=True))
        if log:
            where = f", dashboard {client.dashboard_link}" if client.dashboard_link else ""
            log(f"dask: {n} worker(s){' on ' + ', '.join(devices) if devices else ''}{where}")
        yield client
    finally:
        client.close()
        cluster.close()


#: how long connecting to a scheduler may take, handshake included
CONNECT_S = 30.0


def _connect(scheduler: str):
    """A client of the scheduler at ``scheduler``, or one error within :data:`CONNECT_S` seconds:
    Dask's own timeout covers the connection, not a peer that accepts it and never answers (a
    dashboard's port given for the scheduler's), so the client is made in a thread given a
    deadline (left behind, it ends with the process)."""
    import threading

    from distributed import Client
    made: dict = {}

    def connect():
        try:
            # not the process's default client: one left half-made (no answer) would take every later
            # dask computation of the process, and hang it
            made["client"] = Client(scheduler, timeout="20s", set_as_default=False)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            made["error"] = e
    t = threading.Thread(target=connect, name="scheduler-connect", daemon=True)  # may outlive the call
    t.start()
    t.join(CONNECT_S)
    error = made.get("error")
    if t.is_alive() or isinstance(error, (OSError, ValueError, TypeError)):
        why = f"no answer in {CONNECT_S:.0f} s" if t.is_alive() else str(error)
        raise PanoptemError(f"Cannot reach the Dask scheduler at {scheduler} ({why}); check the address (the "
                            "scheduler's, e.g. tcp://host:8786, not its dashboard's) and that it is running.")
    if error is not None:
        raise error
    return made["client"]


def _wait_for_a_worker(client, scheduler: str, log=None) -> None:
    """Wait, saying so, while the scheduler has no worker (a batch system still starting them):
    the run's checks and thread shares need its workers, and its tasks would wait unseen."""
    with _scheduler_answers(client, "counting its workers"):
        if client.scheduler_info()["workers"]:
            return
    (log or print)(f"dask: scheduler {scheduler} has no worker yet; waiting for one to join (start workers "
                   f"with `dask worker {scheduler}`; Ctrl-C stops)")
    client.wait_for_workers(1)


def _set_up_workers(client, devices: list[str] | None) -> None:
    # each worker caps its threads at its share of its host's cores (without it, every block
    # task would run the network on all of them) and its malloc arenas
    client.register_plugin(_WorkerSetup(devices, 0, slots_per_host(client)))


@contextmanager
def callers_client(client, devices: list[str] | None = None):
    """A client the caller owns: its workers set up as on a running scheduler (threads,
    arenas, devices; the setup stays with them), the client used and left open."""
    _set_up_workers(client, devices)
    yield client


def _unseen(paths: list[str], model: str | None) -> list[str]:
    """On a worker: which of ``paths`` (and ``model``'s card and weights) it cannot find."""
    import os
    out = [p for p in paths if not os.path.exists(p)]
    if model is not None:
        from ..models.home import get_card
        try:
            weights = get_card(model).weights_path()
        except PanoptemError as e:
            return out + [f"model {model!r} ({e})"]
        if "://" not in weights and not os.path.exists(weights):
            out.append(f"the weights {weights} of model {model!r}")
    return out


def check_workers_see(client, paths, model: str | None = None) -> None:
    """Refuse a run before any work when a worker cannot find its files: the input, the work
    folder beside the output, a mask, the model (workers on other hosts read them at the same
    paths, and the model from their own model home)."""
    with _scheduler_answers(client, "asking the workers for the run's files"):
        found = client.run(_unseen, [str(p) for p in paths if p is not None], None if model is None else str(model))
    bad = {w: miss for w, miss in found.items() if miss}
    if bad:
        worker, missing = next(iter(bad.items()))
        raise PanoptemError(f"{len(bad)} of {len(found)} Dask worker(s) cannot find what the run needs (worker "
                            f"{worker}: {'; '.join(missing)}). Put the input, the output's folder and the model "
                            "where every worker reads them at the same path (a shared filesystem), and register "
                            "the model on every worker's host, or pass a card path.")


def _task(fn, job, item):
    """``fn(job, item)``, then the heap's free pages handed back: panoptem keeps freed memory
    between batches of a stack (see :mod:`panoptem._memory`), but a worker's resident memory is
    what Dask's memory limit watches, and a worker held above its pause mark stalls the run."""
    from .._memory import release_free
    try:
        return fn(job, item)
    finally:
        release_free(force=True)


def run_tasks(client, fn, job, items, desc: str, progress: bool) -> list:
    """``fn(job, item)`` for every item on the cluster; results in item order.
    The job is sent to every worker once."""
    from distributed import KilledWorker, as_completed
    if not items:
        return []
    import pickle
    if len(pickle.dumps(job)) > 1 << 20:  # big (an in-memory volume): send it to every worker once
        job = client.scatter([job], broadcast=True, hash=False)[0]  # a list: a dict would be scattered by keys
    job_f = job  # small: goes with every task, so a restarted worker loses nothing
    import uuid
    run = uuid.uuid4().hex[:12]  # tasks named after the pass in the dashboard
    futures = client.map(_task, [fn] * len(items), [job_f] * len(items), items, pure=False,
                         key=[f"{fn.__name__}-{run}-{i}" for i in range(len(items))])
    pos = {f.key: i for i, f in enumerate(futures)}
    results: list = [None] * len(items)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(items), unit="block", desc=desc)
    import time
    # as they end (O(1) each; waiting on the whole pending set after each one is O(n)), on this client (a
    # scheduler's is not the process's default client)
    ended = as_completed(futures, loop=client.loop)
    paused_since, quiet_since = None, time.monotonic()
    try:
        while not ended.is_empty():
            done = ended.next_batch(block=False)
            if not done:
                time.sleep(0.05)
                if time.monotonic() - quiet_since >= POLL_S:  # are the workers held by their memory limit?
                    paused_since, quiet_since = _check_not_stalled(client, paused_since, desc), time.monotonic()
                continue
            paused_since, quiet_since = None, time.monotonic()
            for fut in done:
                results[pos[fut.key]] = fut.result()
                if bar is not None:
                    bar.update(1)
    except KilledWorker as e:
        _stop(client, futures)
        raise PanoptemError(
            f"Dask workers died while running the {desc} pass ({e.allowed_failures + 1} time(s) on one of its "
            f"{len(items)} task(s)), most often for want of memory (the system or Dask's memory limit stops a "
            "worker that outgrows it). Run fewer workers on each machine "
            "(--workers), smaller blocks (--block-shape), or give each worker more memory, then run the same "
            "command again: a segmentation resumes from its finished blocks.") from None
    except KeyboardInterrupt:  # the user stops it: no waiting (a local cluster ends with the process)
        client.cancel(futures)
        raise
    except BaseException as e:
        if _scheduler_lost(client, e):  # nothing to stop: the scheduler and its tasks are gone
            raise PanoptemError(f"The Dask scheduler was lost during the {desc} pass ({type(e).__name__}); check "
                                "that it is running (and reachable), then run the same command again: a "
                                "segmentation resumes from its finished blocks.") from None
        _stop(client, futures)
        raise
    finally:
        if bar is not None:
            bar.close()
    return results


#: how often a pass that waits for its tasks looks at its workers (seconds)
POLL_S = 5.0
#: how long every worker may stay paused by its memory limit, running none of a pass's tasks,
#: before the pass is stopped (Dask holds a paused worker's tasks until its memory falls)
PAUSED_S = 30.0


def _check_not_stalled(client, paused_since: float | None, desc: str) -> float | None:
    """Raise once every worker has been paused by Dask's memory limit (its process above the
    limit's pause mark), running none of the pass's tasks, for :data:`PAUSED_S` seconds: a
    worker that uses that much at rest never starts a block, and the run would wait forever.
    Returns when the pause began (None while some worker runs)."""
    import time
    try:
        workers = client.scheduler_info(n_workers=-1)["workers"]
    except TypeError:  # older distributed: every worker anyway
        workers = client.scheduler_info()["workers"]
    except Exception:  # noqa: BLE001 - a lost scheduler is told where the pass waits
        return None
    if not workers or any(w.get("status") != "paused" for w in workers.values()):
        return None
    try:
        if any(client.run(_executing_keys).values()):
            return None  # a block still runs: it may end and free its memory
        held = client.run(_memory_marks)
    except Exception:  # noqa: BLE001 - workers going away: the pass's own errors tell it
        return None
    now = time.monotonic()
    if paused_since is None or now - paused_since < PAUSED_S:
        return now if paused_since is None else paused_since
    worker, (used, limit, pause) = next(iter(held.items()))
    mib = 1 << 20
    raise PanoptemError(
        f"The {desc} pass cannot go on: every Dask worker ({len(held)}) is paused by its memory limit and "
        f"starts no block (worker {worker} uses {used / mib:.0f} MiB, above its pause mark of "
        f"{pause * limit / mib:.0f} MiB, {pause:.0%} of its {limit / mib:.0f} MiB limit). Give each worker more "
        "memory (dask worker --memory-limit, LocalCluster(memory_limit=...)), a few GB each, then run the "
        "same command again: a segmentation resumes from its finished blocks.")


def _memory_marks(dask_worker) -> tuple[int, int, float]:
    """A worker's process memory, its memory limit and the fraction of it at which it pauses."""
    mm = dask_worker.memory_manager
    return int(dask_worker.monitor.get_process_memory()), int(mm.memory_limit or 0), \
        float(mm.memory_pause_fraction or 0.0)


@contextmanager
def _scheduler_answers(client, doing: str):
    """One error where the scheduler is lost while panoptem is ``doing`` something before the
    passes (those tell it themselves: :func:`run_tasks`)."""
    try:
        yield
    except Exception as e:
        if not _scheduler_lost(client, e):
            raise
        raise PanoptemError(f"The Dask scheduler was lost while {doing} ({type(e).__name__}); check that it is "
                            "running (and reachable), then run the same command again.") from None


def _scheduler_lost(client, error: BaseException) -> bool:
    """Whether ``error`` ended a pass because the client lost its scheduler."""
    from concurrent.futures import CancelledError

    from distributed.comm.core import CommClosedError
    if not isinstance(error, (CancelledError, CommClosedError, OSError, TimeoutError)):
        return False
    return "scheduler-connection-lost" in str(error) or client.status not in ("running", "newly-created")


#: how long a failed pass waits for its tasks already running to end
STOP_WAIT_S = 600.0


def _stop(client, futures) -> None:
    """Cancel a failed pass's tasks and wait (up to :data:`STOP_WAIT_S`) until none of them is
    still running on a worker: a cancelled task that has started runs to its end, and one
    left writing into the work folder would race with the run that resumes it."""
    import time
    client.cancel(futures)
    keys = {str(f.key) for f in futures}
    deadline = time.monotonic() + STOP_WAIT_S
    while time.monotonic() < deadline:
        try:
            running = client.run(_executing_keys)
        except Exception:  # workers gone (a local cluster closing): nothing left running
            return
        if not any(keys.intersection(k) for k in running.values()):
            return
        time.sleep(0.1)


def _executing_keys(dask_worker) -> list[str]:
    """The keys of the tasks this worker is running now (cancelled ones included, until they end)."""
    state = dask_worker.state
    return [str(ts.key) for ts in (*state.executing, *state.long_running)]
