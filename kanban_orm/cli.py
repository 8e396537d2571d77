"""The ``kanban-orm`` command (placeholder until the CLI lands)."""
def main() -> None:
    pass
