"""The kanban_orm stress suite: real worker processes against a real database.

Run ``python -m stress [scenario]`` from a checkout, or ``kanban-orm stress`` from an
installed wheel (where this package ships as ``kanban_orm._stress``). Each scenario
spawns worker processes, checks its invariants against the workers' logs and the
database, prints a report and exits 1 on any violation.

Only relative imports are used inside this package, so it runs under either name.
"""
