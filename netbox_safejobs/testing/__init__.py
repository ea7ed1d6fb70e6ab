"""
Support code for the tests, the benchmarks, the demo command and the development tool: processes (``processes``),
RQ queue overrides (``queues``), job rows and pushes made by hand (``fixtures``).

Never imported by the plugin's runtime path (a test checks it): only ``demo.py`` and the management commands,
which run on demand, use it inside the package.
"""
