"""python -m benchmarks.fleet: `make bench` (benchmarks.fleet.race)."""
import sys

from benchmarks.fleet.race import main

sys.exit(main())
