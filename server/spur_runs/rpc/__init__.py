"""The gRPC call frame: interceptors (errors to statuses, auth, access log
and metrics, limits and deadlines, request decoding) and the one mapping of
domain errors to gRPC codes, google.rpc.Status and HTTP statuses."""
