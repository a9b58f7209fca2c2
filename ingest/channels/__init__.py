"""The ingest's channels to other processes on the machine, each protocol in one place that
both sides import: the latest-tick table (`latest_table` its layout, `latest_publisher` the
ingest's side, `latest_reader` everyone else's) and the control socket (`control`)."""
