#!/usr/bin/env python
"""Copy every legacy BLOB model in ``ml_models`` to a verified file; adopt the minibar app's model files.

BLOBs are loaded under an allow-list (model classes only) and copied byte for
byte; rows with the app's ``FILE_BASED`` marker and a path have their joblib
file loaded under the same allow-list and copied into the models directory
(the marker itself is never unpickled).  Every row records its input signature.

    python migrate_models_to_filesystem.py --dry-run        # report only; writes nothing
    python migrate_models_to_filesystem.py                  # migrate, keep the BLOBs as the fallback
    python migrate_models_to_filesystem.py --purge-blobs    # migrate and drop the verified BLOBs

Reads ``DATABASE_URL`` and ``ML_MODELS_DIR`` like the service (``config.py``).
The same command as ``flask ml migrate``: this runs that very click command, so
options, per-model lines, the summary and the exit status (0 when every row
was migrated, adopted or already done; 1 if any model failed) are identical.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from flask.cli import ScriptInfo


def _create_app():
    # Imported only when the command runs (not for --help or a usage error).
    from app import create_app

    return create_app()


def main(argv: Optional[Sequence[str]] = None) -> None:
    from utils.cli.models import migrate_command

    # ScriptInfo(create_app=...) is how ``with_appcontext`` finds the app
    # outside the ``flask`` command.
    migrate_command.main(
        args=list(sys.argv[1:] if argv is None else argv),
        prog_name="migrate_models_to_filesystem.py",
        obj=ScriptInfo(create_app=_create_app),
    )


if __name__ == "__main__":
    main()
