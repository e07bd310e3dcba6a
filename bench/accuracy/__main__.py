"""``python3 -m bench.accuracy``: see :mod:`bench.accuracy.run`."""

from bench.accuracy.run import main

raise SystemExit(main())
