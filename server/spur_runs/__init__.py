"""spur-runs: the Runs API of PySpur as a gRPC service."""
