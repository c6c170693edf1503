"""The Django-free core: everything a worker process runs, and the rules the apps share.

Nothing here imports Django, an app or a model (enforced by the import-linter contracts in
.importlinter); docs/architecture.md maps the layers.
"""
