"""``python -m bench [--quick] [--output PATH]``: run every section, print the table, write JSON."""
from bench.runner import main

raise SystemExit(main())
