#!/usr/bin/env node
// Calls every RPC of spur.runs.v1.RunService with stubs generated from
// protos/ (buf + protoc-gen-es, see ../buf.gen.yaml) and @connectrpc/connect
// over gRPC (HTTP/2), and checks the answers: ids, enums by name,
// timestamps, Struct fields, and the NOT_FOUND / INVALID_ARGUMENT codes with
// their google.rpc.BadRequest details.
//
//   node dist/runs_client.js HOST:PORT [--token T] [--delete RUN_ID]
//        [--http HOST:PORT]
//   node dist/runs_client.js HOST:PORT [--token T] --watch RUN_ID
//
// The first form walks ListRuns page by page, then GetRun, GetRunTasks and
// GetChildRuns of every run, the filters and views of ListRuns, WatchRun of a
// finished run, the error cases, DeleteRun of --delete, and with --http the
// HTTP/JSON gateway (./gateway.ts). It prints one JSON summary on stdout and
// exits 0, or names the first failed check on stderr and exits 1.
//
// The second form prints one JSON line per WatchRun message, as it arrives,
// until the stream ends: a test changes the run meanwhile.
import { parseArgs } from "node:util";
import { createClient, Code, ConnectError, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { timestampDate, timestampFromDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { JsonObject, MessageInitShape } from "@bufbuild/protobuf";
import { BadRequestSchema } from "./gen/google/rpc/error_details_pb.js";
import { Run_Status, RunView, Task_Status, type Run, type Task } from "./gen/spur/runs/v1/run_pb.js";
import {
  RunService,
  type GetRunResponse,
  type ListRunsRequestSchema,
  type ListRunsResponse,
} from "./gen/spur/runs/v1/run_service_pb.js";
import { CheckFailed, check, codeName, failure } from "./check.js";
import { checkGateway, type GatewayReport } from "./gateway.js";

type RunsClient = Client<typeof RunService>;
type ListRunsInit = MessageInitShape<typeof ListRunsRequestSchema>;

const PAGE_SIZE = 2; // small, so that page tokens are exercised
const TASK_PAGE_SIZE = 4; // smaller than a run's 6 tasks

interface RunSummary {
  status: string;
  workflow_id: string;
  workflow_version_id: string | null;
  start_time: string | null;
  end_time: string | null;
  duration: number | null;
  tasks: number;
  task_statuses: string[];
  node_types: Record<string, string>;
  definition_nodes: string[];
  initial_inputs: JsonObject | null;
  children: string[];
  parent: string | null;
}

// Enum values by name, the way a person (and the other clients) read them.
// Run.Status and Task.Status are spelled as PySpur spells them ("COMPLETED").
const runStatusName = (s: Run_Status): string => Run_Status[s] ?? String(s);
const taskStatusName = (s: Task_Status): string => Task_Status[s] ?? String(s);

function iso(ts: Timestamp | undefined): string | null {
  return ts === undefined ? null : timestampDate(ts).toISOString();
}

// The BadRequest detail of an INVALID_ARGUMENT, decoded from the
// grpc-status-details-bin trailer with the generated google.rpc schema.
function violatedFields(error: ConnectError): string[] {
  return error.findDetails(BadRequestSchema).flatMap((d) => d.fieldViolations.map((v) => v.field));
}

function checkRun(run: Run, where: string): void {
  check(run.id.startsWith("R"), `${where}: run id ${run.id}`);
  check(run.status in Run_Status && run.status !== Run_Status.STATUS_UNSPECIFIED, `${where}: status ${run.status}`);
  if (run.startTime && run.endTime) {
    const start = timestampDate(run.startTime).getTime();
    const end = timestampDate(run.endTime).getTime();
    check(end >= start, `${where}: ends before it starts`);
    // duration is end - start, in seconds, when the run has ended.
    check(
      run.duration !== undefined && Math.abs(run.duration - (end - start) / 1000) < 0.001,
      `${where}: duration ${run.duration}, times say ${(end - start) / 1000}`,
    );
  }
}

function checkTask(task: Task, run: Run, nodeTypes: Map<string, string>): void {
  const where = `task ${task.id} of ${run.id}`;
  check(task.runId === run.id, `${where} says run ${task.runId}`);
  check(task.status in Task_Status && task.status !== Task_Status.STATUS_UNSPECIFIED, `${where}: status ${task.status}`);
  // node_type is derived by the server from the version's definition (a
  // Struct, here a JsonObject): both must agree.
  check(
    task.nodeType === (nodeTypes.get(task.nodeId) ?? ""),
    `${where}: node_type ${task.nodeType}, definition says ${nodeTypes.get(task.nodeId)}`,
  );
}

// Node id -> node type, read from a workflow definition (google.protobuf.Struct).
function nodeTypesOf(definition: JsonObject | undefined): Map<string, string> {
  const types = new Map<string, string>();
  const nodes = definition?.["nodes"];
  if (!Array.isArray(nodes)) return types;
  for (const node of nodes) {
    if (node && typeof node === "object" && !Array.isArray(node)) {
      const { id, node_type } = node;
      if (typeof id === "string" && typeof node_type === "string") types.set(id, node_type);
    }
  }
  return types;
}

async function listAll(client: RunsClient, request: ListRunsInit): Promise<Run[]> {
  const runs: Run[] = [];
  let pageToken = "";
  do {
    // parentOnly false unless asked: child runs too (unset, ListRuns lists
    // top-level runs only, as PySpur's router does).
    const page = await client.listRuns({ parentOnly: false, ...request, pageSize: PAGE_SIZE, pageToken });
    check(page.runs.length <= PAGE_SIZE, `ListRuns returned ${page.runs.length} > ${PAGE_SIZE} runs`);
    runs.push(...page.runs);
    pageToken = page.nextPageToken;
  } while (pageToken);
  const ids = runs.map((r) => r.id);
  check(new Set(ids).size === ids.length, `ListRuns pages repeat a run: ${ids}`);
  return runs;
}

async function allTasks(client: RunsClient, runId: string): Promise<Task[]> {
  const tasks: Task[] = [];
  let pageToken = "";
  do {
    const page = await client.getRunTasks({ runId, pageSize: TASK_PAGE_SIZE, pageToken });
    tasks.push(...page.tasks);
    pageToken = page.nextPageToken;
  } while (pageToken);
  return tasks;
}

// ListRuns' filters and views, total_size and the views of GetRun and
// GetChildRuns, checked against the unfiltered listing (issue 7).
async function checkFiltersAndViews(client: RunsClient, all: Run[]): Promise<Record<string, string[]>> {
  const ids = (runs: Run[]) => runs.map((r) => r.id);
  const seen: Record<string, string[]> = {};
  const expect = async (name: string, request: ListRunsInit, keep: (r: Run) => boolean) => {
    const got = ids(await listAll(client, request));
    const want = ids(all.filter(keep));
    check(JSON.stringify(got) === JSON.stringify(want), `ListRuns ${name}: ${got}, expected ${want}`);
    seen[name] = got;
  };
  const first = all[0];
  check(first !== undefined, "no runs to filter");
  await expect("status=FAILED,CANCELED", { status: [Run_Status.FAILED, Run_Status.CANCELED] }, (r) =>
    [Run_Status.FAILED, Run_Status.CANCELED].includes(r.status),
  );
  await expect(`workflow_id=${first.workflowId}`, { workflowId: first.workflowId }, (r) => r.workflowId === first.workflowId);
  await expect("parent_only", { parentOnly: true }, (r) => r.parentRunId === undefined);
  const started = all.filter((r) => r.startTime).map((r) => timestampDate(r.startTime!).getTime());
  const middle = new Date(started.sort((a, b) => a - b)[Math.floor(started.length / 2)] ?? 0);
  await expect(
    `start_time_after=${middle.toISOString()}`,
    { startTimeAfter: timestampFromDate(middle) },
    (r) => r.startTime !== undefined && timestampDate(r.startTime).getTime() >= middle.getTime(),
  );
  await expect(
    `start_time_before=${middle.toISOString()}`,
    { startTimeBefore: timestampFromDate(middle) },
    (r) => r.startTime !== undefined && timestampDate(r.startTime).getTime() < middle.getTime(),
  );

  const counted = await client.listRuns({ pageSize: 1, includeTotalSize: true, status: [Run_Status.COMPLETED], parentOnly: false });
  const completed = all.filter((r) => r.status === Run_Status.COMPLETED).length;
  check(counted.totalSize === completed, `total_size ${counted.totalSize}, expected ${completed}`);
  const uncounted = await client.listRuns({ pageSize: 1 });
  check(uncounted.totalSize === undefined, "total_size set without include_total_size");

  // RUN_VIEW_BASIC: no tasks, no definition, the run's own fields unchanged.
  const basic = await client.listRuns({ pageSize: PAGE_SIZE, view: RunView.BASIC });
  for (const run of basic.runs) {
    check(run.tasks.length === 0 && run.taskCount === 0, `BASIC ${run.id} has tasks`);
    check(run.workflowVersion?.definition === undefined, `BASIC ${run.id} has a definition`);
  }
  const one = await client.getRun({ runId: first.id, view: RunView.BASIC });
  check(one.run?.tasks.length === 0 && one.run.status === first.status, `GetRun BASIC ${first.id}`);
  const parent = all.find((r) => all.some((c) => c.parentRunId === r.id));
  if (parent) {
    const children = await client.getChildRuns({ runId: parent.id, view: RunView.BASIC });
    check(children.runs.every((c) => c.tasks.length === 0), `GetChildRuns BASIC ${parent.id}`);
  }

  // A filter change invalidates the page token.
  const page = await client.listRuns({ pageSize: 1, parentOnly: false });
  if (page.nextPageToken) {
    const error = await failure("ListRuns with another filter's token", () =>
      client.listRuns({ pageSize: 1, pageToken: page.nextPageToken, parentOnly: true }),
    );
    check(error.code === Code.InvalidArgument, `token of another filter: ${codeName(error.code)}`);
  }
  return seen;
}

// WatchRun of a run that has already finished: its state, then the end.
async function checkWatchFinished(client: RunsClient, run: Run): Promise<string[]> {
  const statuses: string[] = [];
  for await (const message of client.watchRun({ runId: run.id }, { timeoutMs: 10_000 })) {
    check(message.run?.id === run.id, `WatchRun(${run.id}) sent run ${message.run?.id}`);
    statuses.push(runStatusName(message.run.status));
  }
  check(statuses.length === 1, `WatchRun(${run.id}) of a finished run sent ${statuses.length} messages`);
  return statuses;
}

async function checkEverything(client: RunsClient, options: Options, calls: Set<string>) {
  // ListRuns, every page.
  const listed = await listAll(client, {});
  const runs: Record<string, RunSummary> = {};
  const fromGrpc = new Map<string, GetRunResponse>();
  for (const summary of listed) {
    const response = await client.getRun({ runId: summary.id });
    const run = response.run;
    check(run?.id === summary.id, `GetRun(${summary.id}) returned run ${run?.id}`);
    check(run.status === summary.status, `GetRun and ListRuns disagree on ${run.id}'s status`);
    checkRun(run, `GetRun(${run.id})`);
    fromGrpc.set(run.id, response);
    // GetRunStatus: the same run; its status differs only for a run with a
    // failed task and none pending or running (reported FAILED).
    const polled = (await client.getRunStatus({ runId: run.id })).run;
    check(polled?.id === run.id, `GetRunStatus(${run.id}) returned run ${polled?.id}`);
    checkRun(polled, `GetRunStatus(${run.id})`);

    const definition = run.workflowVersion?.definition;
    const nodeTypes = nodeTypesOf(definition);
    const tasks = await allTasks(client, run.id);
    tasks.forEach((task) => checkTask(task, run, nodeTypes));
    check(tasks.length === run.taskCount, `${run.id}: ${tasks.length} tasks, task_count ${run.taskCount}`);
    check(
      JSON.stringify(tasks.map((t) => t.id)) === JSON.stringify(run.tasks.map((t) => t.id)),
      `${run.id}: GetRunTasks and GetRun disagree on the tasks`,
    );

    const { runs: children } = await client.getChildRuns({ runId: run.id });
    for (const child of children) {
      check(child.parentRunId === run.id, `child ${child.id} of ${run.id} has parent ${child.parentRunId}`);
    }
    runs[run.id] = {
      status: runStatusName(run.status),
      workflow_id: run.workflowId,
      workflow_version_id: run.workflowVersionId ?? null,
      start_time: iso(run.startTime),
      end_time: iso(run.endTime),
      duration: run.duration ?? null,
      tasks: tasks.length,
      task_statuses: tasks.map((t) => taskStatusName(t.status)),
      node_types: Object.fromEntries(tasks.map((t) => [t.nodeId, t.nodeType])),
      definition_nodes: [...nodeTypes.keys()],
      initial_inputs: run.initialInputs ?? null,
      children: children.map((c) => c.id),
      parent: run.parentRunId ?? null,
    };
  }

  // ListRuns' filters and views, and WatchRun.
  const finished = listed.find((r) => [Run_Status.COMPLETED, Run_Status.FAILED, Run_Status.CANCELED].includes(r.status));
  check(finished !== undefined, "no finished run to watch");
  const filters = await checkFiltersAndViews(client, listed);
  const watched = await checkWatchFinished(client, finished);


  // Errors, with their google.rpc.BadRequest details.
  const errors: Record<string, { code: string; fields: string[] }> = {};
  const expectError = async (name: string, code: Code, call: () => Promise<unknown>) => {
    const error = await failure(name, call);
    check(error.code === code, `${name}: ${codeName(error.code)} "${error.rawMessage}", expected ${codeName(code)}`);
    errors[name] = { code: codeName(error.code), fields: violatedFields(error) };
  };
  await expectError("missing", Code.NotFound, () => client.getRun({ runId: "R999999999" }));
  await expectError("malformed", Code.InvalidArgument, () => client.getRun({ runId: "not-a-run" }));
  await expectError("page_size", Code.InvalidArgument, () => client.listRuns({ pageSize: 1000 }));
  await expectError("page_token", Code.InvalidArgument, () => client.listRuns({ pageToken: "damaged" }));
  await expectError("tasks_missing", Code.NotFound, () => client.getRunTasks({ runId: "R999999999" }));
  await expectError("children_missing", Code.NotFound, () => client.getChildRuns({ runId: "R999999999" }));
  await expectError("watch_missing", Code.NotFound, async () => {
    for await (const _ of client.watchRun({ runId: "R999999999" })) void _;
  });
  for (const name of ["malformed", "page_size", "page_token"]) {
    check(errors[name]?.fields.length === 1, `${name}: BadRequest names ${errors[name]?.fields}`);
  }

  // The gateway, before DeleteRun changes what it would answer.
  let gateway: GatewayReport | null = null;
  if (options.http) {
    const firstPage: ListRunsResponse = await client.listRuns({ pageSize: PAGE_SIZE });
    gateway = await checkGateway(`http://${options.http}`, authHeaders(options), fromGrpc, firstPage, PAGE_SIZE);
  }

  // DeleteRun, then the run (and its children) are gone.
  let deleted: string | null = null;
  if (options.delete) {
    const gone = [options.delete, ...(runs[options.delete]?.children ?? [])];
    await client.deleteRun({ runId: options.delete });
    for (const id of gone) {
      const error = await failure(`GetRun(${id}) after DeleteRun`, () => client.getRun({ runId: id }));
      check(error.code === Code.NotFound, `GetRun(${id}) after DeleteRun: ${codeName(error.code)}`);
    }
    await expectError("delete_again", Code.NotFound, () => client.deleteRun({ runId: options.delete! }));
    deleted = options.delete;
  }

  return {
    methods: [...calls].sort(),
    runs,
    listed: listed.map((r) => r.id),
    filters,
    watched,
    errors,
    gateway,
    deleted,
  };
}

// --watch RUN_ID: one JSON line per message, as it comes.
async function watch(client: RunsClient, runId: string): Promise<void> {
  let messages = 0;
  // No deadline (timeoutMs 0, not the transport's default): a watch lasts
  // as long as the run does.
  for await (const { run } of client.watchRun({ runId }, { timeoutMs: 0 })) {
    check(run?.id === runId, `WatchRun(${runId}) sent run ${run?.id}`);
    checkRun(run, `WatchRun(${runId})`);
    messages += 1;
    const line = {
      status: runStatusName(run.status),
      task_statuses: run.tasks.map((t) => taskStatusName(t.status)),
      end_time: iso(run.endTime),
    };
    process.stdout.write(JSON.stringify(line) + "\n");
  }
  process.stdout.write(JSON.stringify({ end: true, messages }) + "\n");
}

interface Options {
  address: string;
  token?: string | undefined;
  delete?: string | undefined;
  http?: string | undefined;
  watch?: string | undefined;
}

function readOptions(): Options {
  const { values, positionals } = parseArgs({
    options: {
      token: { type: "string" },
      delete: { type: "string" },
      http: { type: "string" },
      watch: { type: "string" },
    },
    allowPositionals: true,
  });
  const [address, ...extra] = positionals;
  check(address !== undefined && extra.length === 0, "usage: runs_client.js HOST:PORT [--token T] [--delete ID] [--http HOST:PORT] [--watch ID]");
  return { ...values, address };
}

function authHeaders(options: Options): Record<string, string> {
  return options.token ? { authorization: `Bearer ${options.token}` } : {};
}

async function main(): Promise<void> {
  const options = readOptions();
  const calls = new Set<string>();
  // Every call goes through here: it carries the token and records which
  // RunService methods this client really called.
  const interceptor: Interceptor = (next) => async (request) => {
    calls.add(request.method.name);
    for (const [name, value] of Object.entries(authHeaders(options))) request.header.set(name, value);
    return next(request);
  };
  const transport = createGrpcTransport({
    baseUrl: `http://${options.address}`,
    interceptors: [interceptor],
    defaultTimeoutMs: 10_000,
  });
  const client = createClient(RunService, transport);
  if (options.watch) {
    await watch(client, options.watch);
    return;
  }
  const summary = await checkEverything(client, options, calls);
  process.stdout.write(JSON.stringify(summary, null, 2) + "\n");
  process.stderr.write(`all checks passed: ${calls.size} methods, ${Object.keys(summary.runs).length} runs\n`);
}

main().catch((error: unknown) => {
  if (error instanceof CheckFailed) {
    process.stderr.write(`check failed: ${error.message}\n`);
  } else if (error instanceof ConnectError) {
    process.stderr.write(`call failed: gRPC code ${codeName(error.code)}: ${error.rawMessage}\n`);
  } else {
    process.stderr.write(`${error instanceof Error ? error.stack : String(error)}\n`);
  }
  process.exitCode = 1;
});
