"""``python -m dialsum``: what launchers that take a module need (``torchrun -m dialsum``)."""

from __future__ import annotations

from dialsum.cli.app import main

raise SystemExit(main())
