"""The schema migrations, applied in order by store.migrations.

Installed as the package `store.sql` (pyproject.toml maps this directory there), so a
regular `pip install .` carries them.
"""
