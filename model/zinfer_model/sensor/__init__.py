"""The sensor model: a small transformer encoder over windows of six-axis smartwatch data (seglearn's watch
recordings), made by the same recipe as the text model (original → half width → pruning → int8) and shipped as
models/zinfer-watch-small/. Run it with `python -m zinfer_model sensor <step>` (see `sensor.cli`)."""
