// The HTTP/JSON gateway, seen from the same generated code.
//
// Connect's own JSON protocol does not reach it: a Connect client POSTs the
// whole request to /spur.runs.v1.RunService/GetRun, while the gateway serves
// the REST routes of the protos' google.api.http rules (GET /run/{run_id},
// fields in the path and query string), and answers that path 404, which
// Connect reads as UNIMPLEMENTED. This module shows that, then shows what does
// work: plain fetch() on the REST routes, the bodies parsed with the generated
// schemas (fromJson), equal to what gRPC answers, errors included.
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { createRegistry, fromJson, toJson, type JsonValue } from "@bufbuild/protobuf";
import { AnySchema, anyUnpack } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { BadRequestSchema } from "./gen/google/rpc/error_details_pb.js";
import {
  GetRunResponseSchema,
  ListRunsResponseSchema,
  RunService,
  type GetRunResponse,
  type ListRunsResponse,
} from "./gen/spur/runs/v1/run_service_pb.js";
import { RunSchema } from "./gen/spur/runs/v1/run_pb.js";
import { check, codeName, failure, sameJson } from "./check.js";

export interface GatewayReport {
  connect_protocol: { code: string; message: string };
  fetched_runs: string[];
  listed_runs: string[];
  // Fields the gateway writes as null and gRPC leaves unset; equal once the
  // nulls are dropped (see strip()).
  null_only_differences: number;
  errors: Record<string, { status: number; code: string; fields: string[] }>;
}

// What a gateway error body is: google.rpc.Status in proto3 JSON, details as
// Any with "@type". (google/rpc/status.proto is not generated here: the body
// is read field by field, and each detail with the generated schemas.)
interface StatusJson {
  code: number;
  message: string;
  details: JsonValue[];
}

// The gateway writes every field, unset ones as null; a proto3 JSON parser
// leaves such a field unset, except a google.protobuf.Value field, which it
// sets to a Value holding null: the JSON cannot tell the two apart. Dropping
// nulls on both sides compares what is really there.
function strip(value: JsonValue): JsonValue {
  if (Array.isArray(value)) return value.map(strip);
  if (value === null || typeof value !== "object") return value;
  const out: { [key: string]: JsonValue } = {};
  for (const [key, item] of Object.entries(value)) {
    if (item !== null) out[key] = strip(item);
  }
  return out;
}

function countNulls(value: JsonValue): number {
  if (value === null) return 1;
  if (typeof value !== "object") return 0;
  return Object.values(value).reduce<number>((n, item) => n + countNulls(item), 0);
}

async function getJson(url: string, headers: Record<string, string>): Promise<[number, JsonValue]> {
  const response = await fetch(url, { headers: { accept: "application/json", ...headers } });
  return [response.status, (await response.json()) as JsonValue];
}

export async function checkGateway(
  baseUrl: string,
  headers: Record<string, string>,
  grpcRuns: Map<string, GetRunResponse>,
  grpcFirstPage: ListRunsResponse,
  pageSize: number,
): Promise<GatewayReport> {
  // 1. Connect's protocol with its JSON codec: the gateway has no such route.
  const connect = createClient(
    RunService,
    createConnectTransport({ baseUrl, httpVersion: "1.1", useBinaryFormat: false }),
  );
  const [someId] = grpcRuns.keys();
  check(someId !== undefined, "no run to ask the gateway for");
  const refused = await failure("Connect JSON GetRun through the gateway", () =>
    connect.getRun({ runId: someId }, { headers }),
  );
  check(
    refused.code === Code.Unimplemented,
    `Connect JSON through the gateway: ${codeName(refused.code)} ${refused.rawMessage}, expected UNIMPLEMENTED (HTTP 404)`,
  );

  // 2. The REST routes, parsed with the generated schemas.
  let nullOnly = 0;
  const fetched: string[] = [];
  for (const [id, fromGrpc] of grpcRuns) {
    // The resource path answers the whole GetRunResponse.
    const [status, body] = await getJson(`${baseUrl}/v1/runs/${id}`, headers);
    check(status === 200, `GET /v1/runs/${id}: HTTP ${status}`);
    // ignoreUnknownFields false: every key the gateway writes is a field of
    // GetRunResponse, under its proto name (fromJson takes both forms).
    const fromHttp = fromJson(GetRunResponseSchema, body, { ignoreUnknownFields: false });
    check(fromHttp.run?.id === id, `GET /v1/runs/${id} returned run ${fromHttp.run?.id}`);
    // PySpur's path answers the run itself (the seed's RunResponseSchema).
    const [seedStatus, seedBody] = await getJson(`${baseUrl}/run/${id}/`, headers);
    check(seedStatus === 200, `GET /run/${id}/: HTTP ${seedStatus}`);
    // Its times are PySpur's: naive UTC, which PySpur's UI reads as
    // Date.parse(time + "Z"); so does this client, before the schema.
    const bare = fromJson(RunSchema, withZone(seedBody), { ignoreUnknownFields: false });
    check(bare.id === id && bare.status === fromHttp.run.status, `GET /run/${id}/ returned ${bare.id}`);
    check(
      bare.startTime?.seconds === fromHttp.run.startTime?.seconds &&
        bare.startTime?.nanos === fromHttp.run.startTime?.nanos,
      `GET /run/${id}/ and /v1/runs/${id} differ in start_time`,
    );
    if (fromGrpc.run?.endTime === undefined) {
      // A run that has not ended lasts until now: its duration grew between
      // the two calls, and is the one field allowed to differ.
      const [before, after] = [fromGrpc.run?.duration ?? 0, fromHttp.run.duration ?? 0];
      check(after >= before, `GET /run/${id}: duration ${after} < ${before} a moment earlier`);
      fromHttp.run.duration = fromGrpc.run?.duration;
    }
    const a = toJson(GetRunResponseSchema, fromGrpc);
    const b = toJson(GetRunResponseSchema, fromHttp);
    check(
      sameJson(strip(a), strip(b)),
      `GET /run/${id} and gRPC GetRun differ:\n${JSON.stringify(a)}\n${JSON.stringify(b)}`,
    );
    nullOnly += countNulls(b) - countNulls(a);
    fetched.push(id);
  }
  const [listStatus, listBody] = await getJson(`${baseUrl}/v1/runs?page_size=${pageSize}`, headers);
  check(listStatus === 200, `GET /v1/runs: HTTP ${listStatus}`);
  const listed = fromJson(ListRunsResponseSchema, listBody, { ignoreUnknownFields: false });
  const listedIds = listed.runs.map((r) => r.id);
  check(
    sameJson(listedIds, grpcFirstPage.runs.map((r) => r.id)),
    `GET /run lists ${listedIds}, gRPC ListRuns ${grpcFirstPage.runs.map((r) => r.id)}`,
  );

  // 3. Errors: google.rpc.Status as JSON, its BadRequest detail decoded
  // through the generated schema.
  const registry = createRegistry(BadRequestSchema);
  const errors: GatewayReport["errors"] = {};
  for (const [name, path, httpStatus, code] of [
    ["missing", "/run/R999999999", 404, Code.NotFound],
    ["malformed", "/run/not-a-run", 400, Code.InvalidArgument],
    ["page_size", "/run?page_size=1000", 400, Code.InvalidArgument],
  ] as const) {
    const [status, body] = await getJson(baseUrl + path, headers);
    const error = body as unknown as StatusJson;
    check(status === httpStatus, `GET ${path}: HTTP ${status}, expected ${httpStatus}`);
    check(error.code === code, `GET ${path}: code ${error.code}, expected ${code}`);
    const fields: string[] = [];
    for (const detail of error.details) {
      const any = fromJson(AnySchema, detail, { registry });
      const badRequest = anyUnpack(any, BadRequestSchema);
      check(badRequest !== undefined, `GET ${path}: a detail of type ${any.typeUrl}`);
      fields.push(...badRequest.fieldViolations.map((v) => v.field));
    }
    errors[name] = { status, code: codeName(error.code), fields };
  }
  return {
    connect_protocol: { code: codeName(refused.code), message: refused.rawMessage },
    fetched_runs: fetched,
    listed_runs: listedIds,
    null_only_differences: nullOnly,
    errors,
  };
}

const TIME_KEYS = new Set(["start_time", "end_time", "created_at", "updated_at"]);

/** `body` with PySpur's naive UTC times given their zone, as PySpur's UI
 * reads them (`time + "Z"`): what proto3 JSON's Timestamp requires. */
function withZone(body: JsonValue): JsonValue {
  if (Array.isArray(body)) return body.map(withZone);
  if (body === null || typeof body !== "object") return body;
  return Object.fromEntries(
    Object.entries(body).map(([key, value]) => [
      key,
      TIME_KEYS.has(key) && typeof value === "string" && !value.endsWith("Z")
        ? `${value}Z`
        : withZone(value),
    ]),
  );
}
