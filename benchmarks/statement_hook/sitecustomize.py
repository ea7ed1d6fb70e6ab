# Put on PYTHONPATH by the harness for a profiled run only (benchmarks/statement_log.py): every NetBox process it
# starts logs its statements, and with SAFEJOBS_HORSE_CPROFILE each work horse writes a cProfile of its life.
import os

if os.environ.get('SAFEJOBS_STATEMENT_LOG'):
    from benchmarks.statement_log import install

    install(os.environ['SAFEJOBS_STATEMENT_LOG'])

if os.environ.get('SAFEJOBS_HORSE_CPROFILE'):
    from benchmarks.statement_log import profile_work_horses

    profile_work_horses(os.environ['SAFEJOBS_HORSE_CPROFILE'])
