#!/usr/bin/env bash
# Generates the Go stubs of protos/ and builds clients/go/main.go into
# clients/go/build/runs-client, from Debian's packages only: Go in GOPATH mode
# over /usr/share/gocode, no module download (GOPROXY=off). Needs
#
#   apt-get install -y --no-install-recommends golang-go protoc-gen-go protoc-gen-go-grpc \
#     golang-google-grpc-dev golang-google-genproto-dev golang-github-golang-protobuf-1-5-dev
#
# (protobuf-compiler, Debian's protoc, comes with protoc-gen-go-grpc). The
# generated code lands in clients/go/build/ (git-ignored), never committed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build="$here/build"
gopath="$build/gopath"
# The protos name no go_package: this client's import path for them.
pkg="example.com/spur-runs/gen/go/spur/runs/v1"

rm -rf "$gopath/src/example.com"
mkdir -p "$gopath/src"
maps=""
for f in spur/runs/v1/run.proto spur/runs/v1/run_service.proto; do
	maps="$maps,M$f=$pkg;runsv1"
done
# google/api/annotations.proto keeps its own go_package (genproto's, which
# Debian ships); the well-known types come from /usr/include (libprotobuf-dev).
protoc -I "$root/protos" -I "$root/third_party/googleapis" -I /usr/include \
	--go_out="paths=import$maps:$gopath/src" \
	--go-grpc_out="paths=import$maps:$gopath/src" \
	spur/runs/v1/run.proto spur/runs/v1/run_service.proto

export GO111MODULE=off GOPROXY=off GOFLAGS= GOPATH="$gopath:/usr/share/gocode"
unformatted="$(gofmt -l "$here/main.go")"
[ -z "$unformatted" ] || { echo "gofmt -w $unformatted" >&2; exit 1; }
go vet "$here/main.go"
go build -o "$build/runs-client" "$here/main.go"
echo "built $build/runs-client" >&2
