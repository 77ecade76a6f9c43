"""Alembic environment and revisions, plus the helpers the revisions share.

``migrations.vocab`` (the hotel app's frozen vocabulary) and
``migrations.ledger`` (reversible schema steps) are plain modules so that a
revision can import them; Alembic itself loads ``env.py`` and ``versions/``.
"""
