"""The sections of ``benchmarks/run.py``: each module's ``run(options, context)`` returns its table rows."""
