"""The `qfleet` command line (console script `qfleet = qfleet.cli.main:main`)."""
