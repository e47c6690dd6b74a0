"""The RunService: requests checked and turned into storage calls, rows
turned into messages, the watch hub. Raises domain errors; spur_runs.rpc
maps them to statuses."""
