"""The bench's shared code; each measurement is a script in bench/.

A script run as `python bench/NAME.py` has bench/ on sys.path, so it imports
`from lib import ...` as it is. Modules:

- common:      paths, the load shape (16 calls in flight), RPC paths, log
- tools:       h2load and wrk (apt-get), bench/.data/venv with the PySpur peer
- procs:       servers started and stopped, /proc CPU and memory, ports
- load:        h2load and wrk runs, cases and rounds, per-round ratios
- data:        databases made, seeded, sampled and dropped
- servers:     `spur-runs serve`, the PySpur peer, the floor, a baseline tree's server
- statements:  GetRun's SQL statement count, in process
- suite:       run.py's cases for one database
- targets:     the targets of issues 5 and 17, PASS/MISS
- report:      RESULTS.md

and the programs the bench starts: floor_server.py, aio_server.py,
pyspur_peer.py (run in the peer venv), chart.py (ditto), wrk_paths.lua.
"""
