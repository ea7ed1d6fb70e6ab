"""
Deliberately broken builds of the plugin, for the fault explorer's own test (benchmarks/harness/explorer.py): a search
that never finds a break in a build known to be broken proves nothing. ``MUTANTS`` maps a name to the module it
breaks and how. A worker whose environment has SAFEJOBS_HARNESS_MUTANT set to a name and whose PYTHONPATH starts with
the directory ``write_sitecustomize()`` fills applies it as that module is imported, in the worker and in every work
horse it forks. Never applied outside the explorer's workers.
"""

import importlib.abc
import importlib.util
import os
import sys

__all__ = (
    'MUTANTS',
    'MUTANT_VARIABLE',
    'apply_from_environment',
    'write_sitecustomize',
)

MUTANT_VARIABLE = 'SAFEJOBS_HARNESS_MUTANT'


def no_existence_check(guard):
    """The guard's existence check switched off: a task whose Job row is gone runs all the same."""
    original = guard._claim_once

    def claim_once(job, runner, using, token, next_run):
        result, value = original(job, runner, using, token, next_run)
        if result == guard.ClaimResult.MISSING:
            job.status = 'running'
            return guard.ClaimResult.CLAIMED, job
        return result, value

    guard._claim_once = claim_once


def no_liveness(worker_loop):
    """The liveness check switched off: a dead work horse's or worker's job is never closed."""
    from netbox_safejobs import liveness

    liveness.close_dead_horses = lambda *args, **kwargs: []
    liveness.close_stale = lambda *args, **kwargs: liveness.LivenessReport()
    worker_loop.horse_ended = lambda *args, **kwargs: []


# Name -> (the module it breaks, the function that breaks it once imported).
MUTANTS = {
    'no_existence_check': ('netbox_safejobs.guard', no_existence_check),
    'no_liveness': ('netbox_safejobs.worker_loop', no_liveness),
}


class _BreakOnImport(importlib.abc.MetaPathFinder):
    def __init__(self, name, apply):
        self.name, self.apply = name, apply

    def find_spec(self, name, path=None, target=None):
        if name != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            self.apply(module)

        spec.loader.exec_module = exec_module
        return spec


def apply_from_environment():
    """Break the module of the mutant named in the environment, now if it is imported, else as it is imported."""
    name = os.environ.get(MUTANT_VARIABLE)
    if not name:
        return
    module_name, apply = MUTANTS[name]
    if module_name in sys.modules:
        apply(sys.modules[module_name])
    else:
        sys.meta_path.insert(0, _BreakOnImport(module_name, apply))


def write_sitecustomize(directory):
    """A ``sitecustomize.py`` in ``directory`` that applies the environment's mutant at interpreter start-up."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / 'sitecustomize.py').write_text(
        '# Written by benchmarks/harness/explorer.py: a deliberately broken build (benchmarks/mutants.py).\n'
        'from benchmarks.mutants import apply_from_environment\n\napply_from_environment()\n')
    return directory
