"""A worker that runs many regenerations at once, each in a thread of its own.

A regeneration spends almost all of its life waiting on the model, so a whole
process per regeneration in flight (RQ's forking ``Worker``) costs tens of MiB
each; a thread waiting on an HTTPS answer costs well under one.
:class:`ThreadedWorker` is :class:`~flask_plan_regen.recovery.RecoveringWorker`
(Redis outages, the recovery sweep, RQ's scheduler kept running) that takes up
to ``threads`` jobs from its queues, in priority order, and runs each with RQ's
own ``perform_job`` in a daemon thread, so RQ's registries, executions and
results stay what they would be for one job at a time.

What a work horse got from being a process, a thread gets from the job and
from here:

* **Time limits and cancel** cannot be imposed on a thread from outside (RQ's
  job timeout is a ``SIGALRM``, its stop-job command kills a process): the
  attempt checks its own limits and its cancel key between chunks
  (checkpoints.py). A thread still running past RQ's job timeout + 60 s (where
  RQ kills a work horse) is given up on: its slot is freed, its job is failed
  in RQ's registries at once, nothing of its later end reaches RQ, and the
  sweep releases its attempt.
* **Heartbeats**: one monitor thread keeps every running job's RQ heartbeat
  (started registry, execution) and the worker's, every
  ``job_monitoring_interval``.
* **Database connections**: each job takes one from the app's pool only while
  it reads or writes (jobs.py closes its session before the provider call),
  so the pool does not grow with ``threads``.
* **Shutdown**: the first SIGTERM stops taking jobs and gives the running ones
  ``PLAN_REGEN_SHUTDOWN_GRACE`` seconds to end; the attempts still running then
  are released (counted as lost, queued again for other workers) and the
  worker exits. A second SIGTERM (or SIGKILL) exits at once and leaves them to
  the sweep of the other workers, which finds their leases lapsed.

Run it with ``flask plan-regen worker --threads N`` or
``rq worker -w flask_plan_regen.threaded_worker.ThreadedWorker`` (then
``PLAN_REGEN_WORKER_THREADS`` sets N).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from typing import Any

from redis.exceptions import RedisError
from rq import Queue, Worker
from rq.command import parse_payload
from rq.exceptions import StopRequested
from rq.executions import Execution
from rq.job import Job
from rq.timeouts import BaseDeathPenalty
from rq.utils import now
from rq.worker import WorkerStatus

from . import lifecycle
from .jobs import worker_app
from .recovery import RecoveringWorker
from .state import get_state

logger = logging.getLogger("flask_plan_regen.threaded_worker")

# Where RQ gives up on a work horse that outlives its job timeout (monitor_work_horse).
_OVERDUE_MARGIN = 60
_HORSE_COMMANDS = frozenset({"stop-job", "stop-execution", "kill-horse"})


class NoDeathPenalty(BaseDeathPenalty):
    """RQ's timeouts are signals, which only reach the main thread: jobs keep their own."""

    def setup_death_penalty(self) -> None:
        pass

    def cancel_death_penalty(self) -> None:
        pass


@dataclasses.dataclass
class _Running:
    job: Job
    queue: Queue
    execution: Execution
    started: float


class ThreadedWorker(RecoveringWorker):
    """:class:`RecoveringWorker` running up to :attr:`threads` jobs at once, in threads.

    ``threads`` defaults to ``PLAN_REGEN_WORKER_THREADS`` (``rq worker -w`` passes no
    options to the class); ``flask plan-regen worker --threads N`` passes it.
    """

    forks_work_horses = False
    death_penalty_class = NoDeathPenalty

    def __init__(self, *args: Any, threads: int | None = None, **kwargs: Any) -> None:
        app = worker_app()
        self.threads = int(threads or app.config["PLAN_REGEN_WORKER_THREADS"])
        self.grace_period = float(app.config["PLAN_REGEN_SHUTDOWN_GRACE"])
        with app.app_context():  # once here, not raced by the first jobs' threads
            get_state().dispose_engines_after_fork()
        self._running: dict[str, _Running] = {}  # by execution id
        self._given_up: set[str] = set()  # execution ids whose outcome RQ no longer hears of
        self._local = threading.local()  # in a job's thread: its execution id
        self._changed = threading.Condition()
        self._dequeuing = False
        self._monitor_stop = threading.Event()
        self._monitor: threading.Thread | None = None
        super().__init__(*args, **kwargs)

    # -- taking and running jobs (main thread) ---------------------------------------

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        # A SIGTERM while blocked here interrupts the wait (nothing was taken yet).
        self._dequeuing = True
        try:
            if self._stop_requested:
                raise StopRequested()
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        finally:
            self._dequeuing = False

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Start ``job`` in a thread; return once fewer than :attr:`threads` jobs run."""
        try:
            execution = self.prepare_execution(job)
        except RedisError as error:
            # Taken off its queue but never started: its row stays pending, and the
            # sweep queues it again once its job is found gone.
            self.log.warning("Worker %s: job %s not started: %s", self.name, job.id, error)
            self.wait_for_redis()
            return
        thread = threading.Thread(
            target=self._perform, args=(job, queue, execution), name=f"job-{job.id}", daemon=True
        )
        with self._changed:
            self._running[execution.id] = _Running(job, queue, execution, time.monotonic())
        thread.start()
        self._start_monitor()
        while True:
            with self._changed:
                if len(self._running) < self.threads or self._stop_requested:
                    return
                self._changed.wait(timeout=1.0)
            self._maintain_when_busy()

    def _maintain_when_busy(self) -> None:
        """RQ's maintenance and the recovery sweep, due while every thread is busy."""
        if self.should_run_maintenance_tasks:
            self.run_maintenance_tasks()

    def _perform(self, job: Job, queue: Queue, execution: Execution) -> None:
        """One job, in its thread: RQ's ``perform_job`` records its outcome or its failure."""
        self._local.execution_id = execution.id
        try:
            self.perform_job(job, queue, execution)
        except Exception:  # RQ could not record the outcome (Redis down); the row has it
            self.log.exception("Worker %s: job %s: RQ's bookkeeping failed", self.name, job.id)
        finally:
            with self._changed:
                self._running.pop(execution.id, None)
                self._changed.notify_all()

    def running_job_ids(self) -> list[str]:
        """The ids of the jobs running in this worker's threads now."""
        with self._changed:
            return [running.job.id for running in self._running.values()]

    # -- RQ's bookkeeping of jobs this worker gave up on -----------------------------

    def _given_up_here(self) -> bool:
        """Whether this thread runs a job given up on: RQ's record of it is settled, and
        its job id may already be another delivery's."""
        return getattr(self._local, "execution_id", None) in self._given_up

    # RQ 3's two ends of perform_job: nothing of them for a job given up on, not even
    # its failure callback (which would release the row another delivery now runs).
    def _finalize_success(
        self, job: Job, queue: Queue, execution: Execution, return_value: Any
    ) -> None:
        if not self._given_up_here():
            super()._finalize_success(job, queue, execution, return_value)

    def _finalize_failure(
        self, job: Job, queue: Queue, execution: Execution, exc_info: Any
    ) -> None:
        if not self._given_up_here():
            super()._finalize_failure(job, queue, execution, exc_info)

    # -- heartbeats and hung jobs (monitor thread) -----------------------------------

    def _start_monitor(self) -> None:
        if self._monitor is None or not self._monitor.is_alive():
            self._monitor_stop.clear()
            self._monitor = threading.Thread(
                target=self._keep_heartbeats, name="plan-regen-job-monitor", daemon=True
            )
            self._monitor.start()

    def _keep_heartbeats(self) -> None:
        while not self._monitor_stop.wait(self.job_monitoring_interval):
            with self._changed:
                running = list(self._running.values())
            for entry in running:
                try:
                    # RQ's own heartbeat of a running job (not the subclasses': their
                    # maintenance runs in the main thread).
                    Worker.maintain_heartbeats(self, entry.job, entry.execution)
                except RedisError as error:
                    self.log.warning("Worker %s: heartbeat not sent: %s", self.name, error)
            self._give_up_on_overdue(running)

    def _give_up_on_overdue(self, running: list[_Running]) -> None:
        now = time.monotonic()
        for entry in running:
            timeout = entry.job.timeout or 0
            if timeout > 0 and now - entry.started > timeout + _OVERDUE_MARGIN:
                self.log.error(
                    "Worker %s: job %s still running %.0f s after it started (job timeout %s "
                    "s); its thread is given up on and its attempt left to the sweep",
                    self.name,
                    entry.job.id,
                    now - entry.started,
                    timeout,
                )
                with self._changed:
                    self._given_up.add(entry.execution.id)
                    self._running.pop(entry.execution.id, None)
                    self._changed.notify_all()
                try:  # failed in RQ's registries now, as RQ fails a work horse it kills
                    self.handle_job_failure(
                        entry.job,
                        entry.queue,
                        exc_string="Its thread outlived the job timeout; given up on.",
                        execution=entry.execution,
                    )
                except RedisError as error:
                    self.log.warning(
                        "Worker %s: job %s not failed: %s", self.name, entry.job.id, error
                    )

    # -- state and commands ----------------------------------------------------------

    def set_state(self, state: str, pipeline: Any = None) -> None:
        # RQ marks a worker idle before each dequeue; with jobs running it is busy.
        if state == WorkerStatus.IDLE and self._running:
            if self.get_state() == WorkerStatus.BUSY and pipeline is None:
                return  # written already: a Redis round trip less per job
            state = WorkerStatus.BUSY
        super().set_state(state, pipeline)

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        # RQ beats before and after every dequeue (three round trips each): while jobs run,
        # the monitor thread keeps the worker alive, and one beat a second is plenty.
        if timeout is None and pipeline is None and self._running and self._beat_recently():
            return
        super().heartbeat(timeout, pipeline)

    def _beat_recently(self) -> bool:
        last = self.last_heartbeat
        return last is not None and (now() - last).total_seconds() < 1

    def kill_horse(self, sig: Any = None) -> None:
        """No work horse: a thread is stopped by its regeneration's cancel (checkpoints.py)."""

    def handle_payload(self, message: Any) -> None:
        # RQ's stop-job would kill "the horse", here this very process (its pid is 0): a
        # regeneration is canceled through its row and its cancel key instead.
        payload = parse_payload(message)
        if payload.get("command") in _HORSE_COMMANDS:
            self.log.info(
                "Worker %s: %s ignored: jobs run in threads and stop at their cancel",
                self.name,
                payload.get("command"),
            )
            return
        super().handle_payload(message)  # type: ignore[no-untyped-call]

    # -- shutdown ------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Warm shutdown: take no more jobs; :meth:`teardown` lets the running ones end."""
        self._stop_requested = True
        with contextlib.suppress(RedisError):
            self.set_shutdown_requested_date()  # type: ignore[no-untyped-call]
        if self.scheduler:
            self.stop_scheduler()  # type: ignore[no-untyped-call]
        with self._changed:
            self._changed.notify_all()
        running = len(self.running_job_ids())
        self.log.warning(
            "Worker %s: warm shutdown: %d running jobs get %.0f s to end (a second signal "
            "leaves them to recovery)",
            self.name,
            running,
            self.grace_period,
        )
        if self._dequeuing:
            raise StopRequested()

    def teardown(self) -> None:
        self._drain()
        self._monitor_stop.set()
        super().teardown()

    def _drain(self) -> None:
        """Wait for the running jobs; after a SIGTERM, at most the grace period, then
        release what still runs."""
        stop_seen: float | None = None
        while True:
            with self._changed:
                if not self._running:
                    return
                if self._stop_requested:
                    stop_seen = stop_seen or time.monotonic()
                    if time.monotonic() - stop_seen >= self.grace_period:
                        break
                self._changed.wait(timeout=0.5)
            if not self._stop_requested:  # a scheduler stopped at shutdown stays stopped
                self._maintain_when_busy()
        with self._changed:
            left = list(self._running.values())
            self._given_up.update(entry.execution.id for entry in left)
            self._running.clear()
        if left:
            self._release(left)

    def _release(self, left: list[_Running]) -> None:
        """Hand the attempts still running to other workers (the grace period is over)."""
        why = f"its worker shut down and the attempt outlived the {self.grace_period:g} s grace"
        with worker_app().app_context():
            state = get_state()
            try:
                for entry in left:
                    try:
                        lifecycle.release(state, entry.job.id, why, requeue=True)
                    except Exception:  # the sweep of another worker releases it later
                        self.log.exception(
                            "Worker %s: could not release %s", self.name, entry.job.id
                        )
            finally:
                state.db.session.remove()
        self.log.warning(
            "Worker %s: released %d running attempts to other workers", self.name, len(left)
        )
