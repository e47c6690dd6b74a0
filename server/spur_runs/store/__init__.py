"""Storage: PySpur's tables, the SQL this service runs on them, and the
migrations, schema checks and backups. Knows SQL and nothing of gRPC or
protobuf; raises the domain errors of spur_runs.errors."""
