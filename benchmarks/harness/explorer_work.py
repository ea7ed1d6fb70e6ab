"""
What the explorer's users and operator do (``Workload``), each action one method named as in ``schedules.WORK`` and
``schedules.OPERATOR``, and the ``History`` they leave: what committed, rolled back, was deleted or stopped, which
webhooks are owed to the receiver, and what a caller got that it should not have.
"""

import json
import os
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from io import StringIO
from pathlib import Path

from .core import HARNESS_TAG
from .doors import PROBE_SCRIPT, Doors

__all__ = (
    'History',
    'Workload',
)

# The periodic job every schedule starts with (minutes, as NetBox counts them): its next run falls after the window.
PERIODIC_INTERVAL = 1


@dataclass
class History:
    committed: dict = field(default_factory=dict)  # job UUID -> kind of work
    rolled_back: set = field(default_factory=set)
    periodic: uuid.UUID = None
    deleted: dict = field(default_factory=dict)  # job UUID -> when its delete returned (time.time())
    stopped: dict = field(default_factory=dict)  # job UUID -> when the stop was asked
    tasks_deleted: dict = field(default_factory=dict)  # job UUID -> when its task was deleted in Background Tasks
    webhooks: dict = field(default_factory=dict)  # tag name -> when the tag was created
    webhooks_deleted: dict = field(default_factory=dict)  # tag name -> when its task was deleted
    scripts_accepted: int = 0
    scripts_refused: int = 0  # HTTP 503: NetBox saw no worker for the queue
    caller_errors: Counter = field(default_factory=Counter)  # 'action: ExceptionType' -> count
    operator: Counter = field(default_factory=Counter)  # what the operator did, and what it found nothing to do for
    faults: list = field(default_factory=list)  # (action, seconds from the start, lasted, note)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def ended_by_operator(self):
        """Jobs an operator deleted, stopped or whose task it deleted: none of them is owed a run."""
        return set(self.deleted) | set(self.stopped) | set(self.tasks_deleted)


class _Rollback(Exception):
    pass


class Workload:
    """
    The users and the operator, in this process (NetBox's web process, as far as the workers can tell): jobs through
    ``JobRunner.enqueue``, tags and script runs through the REST API with Django's test client (NetBox's middleware
    and event rules included), an event rule that sends a webhook to ``doors.receiver`` for each tag. One per run of
    the explorer; ``start(...)`` before each schedule, ``close()`` at the end.
    """

    def __init__(self):
        from django.conf import settings
        from extras.models import Script, ScriptModule

        self.doors = Doors()
        # A file of this process's own: two explorers (on two databases) may run at once.
        path = Path(settings.SCRIPTS_ROOT) / f'safejobs_explorer_probe_{os.getpid()}.py'
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(PROBE_SCRIPT)
        ScriptModule.objects.filter(file_path=path.name).delete()
        self.module = ScriptModule.objects.create(file_root='scripts', file_path=path.name)
        self.script = Script.objects.get(module=self.module)
        self.path = path
        self.history = self.mode = self.seed = None

    def script_jobs(self):
        from core.models import Job, ObjectType
        from extras.models import Script

        return Job.objects.filter(object_type=ObjectType.objects.get_for_model(Script), object_id=self.script.pk)

    def start(self, mode, seed, history):
        self.mode, self.seed, self.history = mode, seed, history
        self.doors.receiver.clear()
        self.script_jobs().delete()
        history.periodic = self._enqueue('periodic', sleep=0.2, interval=PERIODIC_INTERVAL)

    def close(self):
        self.script_jobs().delete()
        self.module.delete()
        self.path.unlink(missing_ok=True)
        self.doors.close()

    def do(self, step, number):
        """Run one step; an exception a caller would get is recorded, never raised."""
        from django.db import connection

        try:
            getattr(self, step.action)(step, random.Random(f'{self.seed}-{number}'))
        except Exception as e:
            with self.history.lock:
                if step.kind == 'operator':
                    # An operator's action failing (Redis away for a Background Tasks delete) is an answer, not a
                    # caller's exception: counted apart.
                    self.history.operator[f'{step.action}: {type(e).__name__}'] += 1
                else:
                    self.history.caller_errors[f'{step.action}: {type(e).__name__}'] += 1
        finally:
            connection.close()

    # -- work ---------------------------------------------------------------------------------------------------

    def _enqueue(self, kind, hold=0.0, rollback=False, **kwargs):
        """
        One ``HarnessJob.enqueue()`` in a transaction of its own (held open ``hold`` s, or rolled back). A push that
        raises after COMMIT (stock NetBox's on-commit push, Redis away) leaves the row committed: recorded as such,
        and the exception as the caller's.
        """
        from django.db import transaction

        from benchmarks.runners import HarnessJob

        job_uuid = None
        try:
            with transaction.atomic():
                job_uuid = HarnessJob.enqueue(**kwargs).job_id
                time.sleep(hold)
                if rollback:
                    raise _Rollback
        except _Rollback:
            with self.history.lock:
                self.history.rolled_back.add(job_uuid)
            return job_uuid
        except Exception:
            if job_uuid is not None:
                with self.history.lock:
                    self.history.committed[job_uuid] = kind
            raise
        with self.history.lock:
            self.history.committed[job_uuid] = kind
        return job_uuid

    def job(self, step, rng):
        self._enqueue('job', sleep=step.seconds)

    def long_job(self, step, rng):
        self._enqueue('long_job', sleep=step.seconds)

    def scheduled_job(self, step, rng):
        from django.utils import timezone

        self._enqueue('scheduled_job', schedule_at=timezone.now() + timedelta(seconds=step.seconds))

    def held_job(self, step, rng):
        self._enqueue('held_job', hold=step.seconds)

    def rolled_back_job(self, step, rng):
        self._enqueue('rolled_back_job', rollback=True)

    def webhook(self, step, rng):
        name = f'{HARNESS_TAG}x{self.seed}-{uuid.uuid4().hex[:12]}'
        response = self.doors.client.post('/api/extras/tags/', data=json.dumps({'name': name, 'slug': name}),
                                          content_type='application/json')
        with self.history.lock:
            if response.status_code == 201:
                self.history.webhooks[name] = time.time()
            else:
                exc = getattr(response, 'exc_info', None)
                name = f' {exc[0].__name__}' if exc else ''
                self.history.caller_errors[f'webhook: HTTP {response.status_code}{name}'] += 1

    def script_run(self, step, rng):
        response = self.doors.client.post(f'/api/extras/scripts/{self.script.pk}/', content_type='application/json',
                                          data=json.dumps({'data': {}, 'commit': True}))
        with self.history.lock:
            if response.status_code == 200:
                self.history.scripts_accepted += 1
            elif response.status_code == 503:
                # NetBox's documented answer when it sees no worker for the queue (every worker restarting, or
                # none heartbeating while the database is cut off from them): refused, not failed.
                self.history.scripts_refused += 1
            else:
                exc = getattr(response, 'exc_info', None)
                name = f' {exc[0].__name__}' if exc else ''
                self.history.caller_errors[f'script_run: HTTP {response.status_code}{name}'] += 1

    # -- the operator -------------------------------------------------------------------------------------------

    def _pick(self, rng, statuses):
        from core.models import Job

        ids = sorted(Job.objects.filter(job_id__in=list(self.history.committed), status__in=statuses)
                     .values_list('pk', flat=True))
        return Job.objects.filter(pk=rng.choice(ids)).first() if ids else None

    def _delete(self, job, action):
        job.delete()
        with self.history.lock:
            self.history.deleted[job.job_id] = time.time()
            self.history.operator[action] += 1

    def _nothing(self, action):
        with self.history.lock:
            self.history.operator[f'{action} (nothing to do)'] += 1

    def delete_pending(self, step, rng):
        job = self._pick(rng, ('pending', 'scheduled'))
        self._delete(job, step.action) if job else self._nothing(step.action)

    def delete_running(self, step, rng):
        job = self._pick(rng, ('running',))
        self._delete(job, step.action) if job else self._nothing(step.action)

    def stop_running(self, step, rng):
        job = self._pick(rng, ('running',))
        if job is None:
            return self._nothing(step.action)
        if self.mode == 'stock':
            # Stock NetBox's only way to stop a job: delete it (its work horse runs on, NetBox #23138).
            return self._delete(job, step.action)
        from netbox_safejobs import stopping

        stopping.request_stop(job)
        with self.history.lock:
            self.history.stopped[job.job_id] = time.time()
            self.history.operator[step.action] += 1

    def delete_task(self, step, rng):
        """Background Tasks: delete a task still queued (a job's or a webhook's), through NetBox's own function."""
        from core.utils import delete_rq_job
        from django_rq import get_queue

        from .core import QUEUES

        queued = sorted(task_id for name in QUEUES for task_id in get_queue(name).get_job_ids())
        if not queued:
            return self._nothing(step.action)
        task_id = rng.choice(queued)
        task = get_queue('default').fetch_job(task_id)
        name = ((task.kwargs or {}).get('data') or {}).get('name') if task is not None else None
        delete_rq_job(task_id)
        with self.history.lock:
            if name in self.history.webhooks:
                self.history.webhooks_deleted[name] = time.time()
            else:
                try:
                    self.history.tasks_deleted[uuid.UUID(task_id)] = time.time()
                except ValueError:
                    pass
            self.history.operator[step.action] += 1

    def send_again(self, step, rng):
        if self.mode == 'stock':
            return self._nothing(step.action)  # stock NetBox has no such action
        from netbox_safejobs import webhooks
        from netbox_safejobs.models import JobDispatch

        if not webhooks.resend(JobDispatch.objects.all()):
            return self._nothing(step.action)
        with self.history.lock:
            self.history.operator[step.action] += 1

    def recover(self, step, rng):
        if self.mode == 'stock':
            return self._nothing(step.action)  # stock NetBox has no such command
        from django.core.management import call_command

        call_command('safejobs_recover', stdout=StringIO())
        with self.history.lock:
            self.history.operator[step.action] += 1
