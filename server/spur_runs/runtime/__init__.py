"""The running process: the server that puts store, api, rpc and gateway
together, its workers, health, reflection and memory trimming."""
