"""``shadowrl serve``: the continuous service (docs/service.md).

One module per concept: the config file (``config``), the state in a database (``store``
and its Alembic ``migrations``), the loop of schedules and job processes (``scheduler``,
``worker``), verdicts (``verdict``) and forecasts (``forecast``), what the API serves
(``state``, ``schemas``) and how (``api``, ``auth``, ``limits``, ``metrics``), and the
process (``server``). The dashboard is static files in ``dashboard/``.
"""
