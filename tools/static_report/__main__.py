"""``python -m tools.static_report --out DIR [--baseline OLD.json]`` from the repository root."""
from tools.static_report.run import main

raise SystemExit(main())
