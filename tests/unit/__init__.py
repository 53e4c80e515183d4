"""Pure, fast tests: no cluster, no network, no clock."""
