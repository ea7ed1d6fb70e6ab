"""
The explorer's schedules: what users, an operator and the world do to NetBox over one window of time, drawn at random
from a seed, so that the same seed always gives the same schedule (``generate``) and a schedule can be cut down to
fewer faults while it still breaks an invariant (``Schedule.keeping``).
"""

import json
import random
from dataclasses import asdict, dataclass, replace

__all__ = (
    'FAULTS',
    'OPERATOR',
    'WORK',
    'Schedule',
    'Step',
    'generate',
)

# What users do, with the weight of each: jobs through JobRunner.enqueue (quick, long, scheduled a few seconds ahead,
# in a transaction held open a while, in one that rolls back), a tag created through the REST API (an event rule
# sends a webhook for it) and a script run through the REST API.
WORK = {
    'job': 6, 'long_job': 1, 'scheduled_job': 2, 'held_job': 2, 'rolled_back_job': 2, 'webhook': 3, 'script_run': 1,
}
# What an operator does, now and then: deletes a waiting or a running job, stops a running one, deletes a queued
# task in Background Tasks, sends again the webhooks RQ gave up on, runs `netbox safejobs_recover`.
OPERATOR = ('delete_pending', 'delete_running', 'stop_running', 'delete_task', 'send_again', 'recover')
# Faults, each with the range of seconds it lasts (0: a moment).
FAULTS = {
    'redis_restart': (1, 8),  # killed, started again empty
    'redis_flush': (0, 0),
    'redis_snapshot': (3, 10),  # a snapshot taken, then Redis restarted from it this many seconds later
    'redis_silent': (2, 8),  # accepts connections, answers nothing
    'pg_blip': (2, 8),  # the workers' PostgreSQL unreachable
    'pg_long': (None, None),  # the same, for longer than stuck_after
    'pg_terminate': (0, 0),  # the workers' backends terminated
    'horse_kill': (0, 0),
    'horse_term': (0, 0),
    'worker_kill': (0, 0),  # SIGKILL to a worker and its work horse; the service manager starts it again
    'worker_term': (0, 0),  # SIGTERM: a warm shutdown; started again
    'key_rotation': (0, 0),  # every worker restarted with a new SECRET_KEY, the old one in the fallbacks
    'worker_added': (5, 20),  # a third worker, stopped (SIGTERM) this many seconds later
}


@dataclass(frozen=True)
class Step:
    at: float  # seconds from the start of the window
    action: str
    seconds: float = 0.0  # how long a fault lasts, or a job runs (or waits, when scheduled)
    kind: str = 'work'  # work, operator or fault


@dataclass(frozen=True)
class Schedule:
    seed: int
    window: float
    steps: tuple

    @property
    def faults(self):
        return [step for step in self.steps if step.kind == 'fault']

    def keeping(self, faults):
        """The same schedule with only the faults of index ``faults`` (indices into ``self.faults``)."""
        kept = {id(step) for i, step in enumerate(self.faults) if i in set(faults)}
        return replace(self, steps=tuple(s for s in self.steps if s.kind != 'fault' or id(s) in kept))

    def describe(self):
        work = sum(1 for s in self.steps if s.kind == 'work')
        operator = ', '.join(f'{s.action}@{s.at:g}' for s in self.steps if s.kind == 'operator')
        faults = ', '.join(f'{s.action}@{s.at:g}' + (f'+{s.seconds:g}s' if s.seconds else '') for s in self.faults)
        return f'seed {self.seed}: {work} work steps; operator: {operator or "-"}; faults: {faults or "-"}'

    def to_json(self):
        return json.dumps({'seed': self.seed, 'window': self.window, 'steps': [asdict(s) for s in self.steps]})

    @classmethod
    def from_json(cls, text):
        data = json.loads(text)
        return cls(data['seed'], data['window'], tuple(Step(**s) for s in data['steps']))


def generate(seed, window=30.0, faults=(1, 3), stuck_after=20.0, rate=2.0):
    """
    The schedule of ``seed``: work about ``rate`` times a second through ``window`` seconds, two to five operator
    actions, and ``faults`` (a range) faults of any family, at any time of the window but its last seconds, so that
    two may overlap.
    """
    rng = random.Random(seed)
    steps = []
    kinds, weights = list(WORK), list(WORK.values())
    at = 0.0
    while True:
        at += rng.expovariate(rate)
        if at >= window:
            break
        action = rng.choices(kinds, weights)[0]
        seconds = {'job': rng.uniform(0, 0.5), 'long_job': rng.uniform(5, 12), 'scheduled_job': rng.uniform(2, 10),
                   'held_job': rng.uniform(0.1, 1.0)}.get(action, 0.0)
        steps.append(Step(round(at, 2), action, round(seconds, 2)))
    for _ in range(rng.randint(2, 5)):
        steps.append(Step(round(rng.uniform(2, window), 2), rng.choice(OPERATOR), kind='operator'))
    for _ in range(rng.randint(*faults)):
        action = rng.choice(list(FAULTS))
        low, high = FAULTS[action]
        seconds = stuck_after + rng.uniform(3, 8) if action == 'pg_long' else rng.uniform(low, high)
        steps.append(Step(round(rng.uniform(2, max(3.0, window - 8)), 2), action, round(seconds, 2), kind='fault'))
    return Schedule(seed, window, tuple(sorted(steps, key=lambda s: (s.at, s.kind, s.action))))
