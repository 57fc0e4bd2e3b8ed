"""The admin listener: JSON API (SPEC §4), Prometheus metrics (§5), dashboard, `steelyard ctl`."""
