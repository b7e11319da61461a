from __future__ import annotations

from spendgate.cli import main

raise SystemExit(main())
