// Command runs-client calls spur-runs' RunService through Go stubs that
// protoc-gen-go and protoc-gen-go-grpc generated from protos/ (build.sh makes
// them, with Debian's Go packages only), and prints what it got as one JSON
// object on stdout, the messages in proto3 JSON (protojson) with the protos'
// field names.
//
//	runs-client -addr localhost:50051 -run R1 -run R2 -page-size 2
//
// It exits 1, with the reason on stderr, when a call fails or an error comes
// back with another code than the contract's: NOT_FOUND for a run that does
// not exist, INVALID_ARGUMENT with a google.rpc.BadRequest naming run_id for
// a malformed id.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	runsv1 "example.com/spur-runs/gen/go/spur/runs/v1"
)

// runIDs collects the repeated -run flag.
type runIDs []string

func (r *runIDs) String() string      { return strings.Join(*r, ",") }
func (r *runIDs) Set(id string) error { *r = append(*r, id); return nil }

// The protos' own (snake_case) names, as PySpur's REST API and our HTTP
// gateway spell them; enums by name, timestamps in RFC 3339.
var marshal = protojson.MarshalOptions{UseProtoNames: true}

// The server's default --max-response-bytes.
const maxResponseBytes = 16 << 20

func asJSON(m proto.Message) json.RawMessage {
	b, err := marshal.Marshal(m)
	if err != nil {
		fail("protojson: %v", err)
	}
	return b
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "runs-client: "+format+"\n", args...)
	os.Exit(1)
}

// errorSummary is what a failed call came back with: its code by name and
// the fields a google.rpc.BadRequest detail names, if it carries one.
type errorSummary struct {
	Code    string   `json:"code"`
	Message string   `json:"message"`
	Fields  []string `json:"fields"`
}

func summarize(err error) errorSummary {
	st := status.Convert(err)
	s := errorSummary{Code: st.Code().String(), Message: st.Message(), Fields: []string{}}
	for _, detail := range st.Details() {
		if bad, ok := detail.(*errdetails.BadRequest); ok {
			for _, v := range bad.GetFieldViolations() {
				s.Fields = append(s.Fields, v.GetField())
			}
		}
	}
	return s
}

func main() {
	addr := flag.String("addr", "localhost:50051", "host:port of spur-runs' gRPC port (plaintext)")
	var ids runIDs
	flag.Var(&ids, "run", "id of a run to GetRun (repeat the flag for more)")
	pageSize := flag.Int("page-size", 10, "ListRuns page size; every page is read, following next_page_token")
	missing := flag.String("missing", "R999999999", "id of a run that does not exist: GetRun must be NOT_FOUND")
	token := flag.String("token", "", "bearer token, when the server demands one")
	timeout := flag.Duration("timeout", 30*time.Second, "deadline of the whole session")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if *token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+*token)
	}
	// grpc-go 1.33 (Debian bookworm's) has no credentials/insecure package
	// nor grpc.NewClient: WithInsecure is its plaintext option.
	// The server sends answers up to its --max-response-bytes (16 MiB by
	// default); grpc-go refuses more than 4 MiB unless told: a run with large
	// outputs would fail here, not there.
	conn, err := grpc.DialContext(ctx, *addr, grpc.WithInsecure(), grpc.WithBlock(),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxResponseBytes)))
	if err != nil {
		fail("dial %s: %v", *addr, err)
	}
	defer conn.Close()
	client := runsv1.NewRunServiceClient(conn)

	got := []json.RawMessage{}
	for _, id := range ids {
		resp, err := client.GetRun(ctx, &runsv1.GetRunRequest{RunId: id})
		if err != nil {
			fail("GetRun %s: %v", id, err)
		}
		if resp.GetRun().GetId() != id {
			fail("GetRun %s answered run %q", id, resp.GetRun().GetId())
		}
		got = append(got, asJSON(resp))
	}

	// Every page, by token, newest first.
	listed := []json.RawMessage{}
	pages := 0
	// page_size and parent_only are proto3 `optional` (pointers in Go): unset
	// means the server's default; parent_only false lists child runs too.
	request := &runsv1.ListRunsRequest{PageSize: proto.Int32(int32(*pageSize)), ParentOnly: proto.Bool(false)}
	for {
		resp, err := client.ListRuns(ctx, request)
		if err != nil {
			fail("ListRuns page %d: %v", pages+1, err)
		}
		pages++
		for _, run := range resp.GetRuns() {
			listed = append(listed, asJSON(run))
		}
		if resp.GetNextPageToken() == "" {
			break
		}
		request = &runsv1.ListRunsRequest{
			PageSize:   proto.Int32(int32(*pageSize)),
			ParentOnly: proto.Bool(false),
			PageToken:  resp.GetNextPageToken(),
		}
	}

	_, err = client.GetRun(ctx, &runsv1.GetRunRequest{RunId: *missing})
	if status.Code(err) != codes.NotFound {
		fail("GetRun %s: want NOT_FOUND, got %v", *missing, err)
	}
	notFound := summarize(err)
	_, err = client.GetRun(ctx, &runsv1.GetRunRequest{RunId: "X1"})
	if status.Code(err) != codes.InvalidArgument {
		fail("GetRun X1: want INVALID_ARGUMENT, got %v", err)
	}
	invalid := summarize(err)

	out := map[string]interface{}{
		"get_run":    got,
		"list_runs":  map[string]interface{}{"runs": listed, "pages": pages},
		"not_found":  notFound,
		"invalid_id": invalid,
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail("write: %v", err)
	}
	fmt.Fprintln(os.Stderr, "runs-client: all checks passed")
}
