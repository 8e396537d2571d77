"""``python -m kanban_orm`` is the ``kanban-orm`` command."""

from .cli import main

main()
