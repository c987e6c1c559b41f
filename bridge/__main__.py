"""`python -m bridge` runs the same console script as `voxys-bridge`."""

from bridge.cli import main

raise SystemExit(main())
