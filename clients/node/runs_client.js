#!/usr/bin/env node
// Calls every RPC of spur.runs.v1.RunService from Node.js and checks the
// answers, with @grpc/grpc-js and @grpc/proto-loader loading the project's
// .proto files at run time (no generated code): the proof that the contract
// works for a client that is not Python.
//
//   node runs_client.js HOST:PORT [--delete RUN_ID] [--token TOKEN]
//                       [--ca CA.pem [--cert CLIENT.pem --key CLIENT.key]]
//
// It walks ListRuns page by page (page tokens), then GetRun, GetRunTasks,
// GetChildRuns and WatchRun (a server stream) of every run, checks ids,
// parent links and enum names, checks that a missing run is NOT_FOUND (for
// GetRun and WatchRun) and a malformed id INVALID_ARGUMENT, and,
// with --delete, deletes that run and checks that it is gone. It prints one
// JSON summary on stdout and exits 0, or names the first failed check on
// stderr and exits 1.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const ROOT = path.resolve(__dirname, '..', '..');
const PROTO_DIRS = [path.join(ROOT, 'protos'), path.join(ROOT, 'third_party', 'googleapis')];
const PAGE_SIZE = 2; // small, so that the page tokens are exercised
// Run.Status values, spelled as PySpur spells them.
const TERMINAL = new Set(['COMPLETED', 'FAILED', 'CANCELED']);

class CheckFailed extends Error {}

function check(condition, message) {
  if (!condition) throw new CheckFailed(message);
}

function parseArgs(argv) {
  const options = { address: null, delete: null, token: null, ca: null, cert: null, key: null };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg.startsWith('--')) {
      const name = arg.slice(2);
      check(name in options && name !== 'address', `unknown option ${arg}`);
      check(i + 1 < argv.length, `${arg} needs a value`);
      options[name] = argv[(i += 1)];
    } else {
      check(options.address === null, `unexpected argument ${arg}`);
      options.address = arg;
    }
  }
  check(options.address, 'usage: runs_client.js HOST:PORT [--delete RUN_ID] [--token T] [--ca F]');
  return options;
}

function loadService() {
  const definition = protoLoader.loadSync('spur/runs/v1/run_service.proto', {
    includeDirs: PROTO_DIRS,
    keepCase: true, // field names as in the .proto (run_id, next_page_token)
    enums: String, // enum values by name, the way a person reads them
    longs: String,
    defaults: true,
    oneofs: true,
  });
  const loaded = grpc.loadPackageDefinition(definition);
  return { RunService: loaded.spur.runs.v1.RunService, definition };
}

// The server's default --max-response-bytes.
const MAX_RESPONSE_BYTES = 16 * 1024 * 1024;

function credentials(options) {
  if (!options.ca) return grpc.credentials.createInsecure();
  const read = (file) => (file ? fs.readFileSync(file) : null);
  return grpc.credentials.createSsl(read(options.ca), read(options.key), read(options.cert));
}

// The value names of an enum nested in a message (Run.Status, Task.Status):
// proto-loader lists nested enums on their message's descriptor.
function nestedEnumNames(definition, message, name) {
  const found = definition[message].type.enumType.find((e) => e.name === name);
  return new Set(found.value.map((v) => v.name));
}

async function main() {
  const options = parseArgs(process.argv.slice(2));
  const { RunService, definition } = loadService();
  // The server sends answers up to its --max-response-bytes (16 MiB by
  // default); grpc-js, like every gRPC library, refuses more than 4 MiB
  // unless told: a run with large outputs would fail here, not there.
  const client = new RunService(options.address, credentials(options), {
    'grpc.max_receive_message_length': MAX_RESPONSE_BYTES,
  });
  const metadata = new grpc.Metadata();
  if (options.token) metadata.set('authorization', `Bearer ${options.token}`);
  let calls = 0;
  const call = (method, request) =>
    new Promise((resolve, reject) => {
      calls += 1;
      client[method](request, metadata, { deadline: Date.now() + 10000 }, (error, response) =>
        error ? reject(error) : resolve(response),
      );
    });
  // A server-streaming call: every message until the stream ends (or its
  // error); with `firstOnly`, the first message, then the call is cancelled
  // (a watch of a run that is still running would last as long as the run).
  const stream = (method, request, firstOnly = false) =>
    new Promise((resolve, reject) => {
      calls += 1;
      const messages = [];
      const call = client[method](request, metadata, { deadline: Date.now() + 10000 });
      call.on('data', (message) => {
        messages.push(message);
        if (firstOnly) {
          call.removeAllListeners('error');
          call.on('error', () => {}); // the CANCELLED that cancel() causes
          call.cancel();
          resolve(messages);
        }
      });
      call.on('error', reject);
      call.on('end', () => resolve(messages));
    });
  const failure = async (method, request) => {
    try {
      await call(method, request);
    } catch (error) {
      return error;
    }
    throw new CheckFailed(`${method}(${JSON.stringify(request)}) succeeded, expected an error`);
  };

  const runStatuses = nestedEnumNames(definition, 'spur.runs.v1.Run', 'Status');
  const taskStatuses = nestedEnumNames(definition, 'spur.runs.v1.Task', 'Status');

  // ListRuns, every page.
  const listed = [];
  let token = '';
  do {
    // parent_only false: child runs too (unset, it lists top-level runs only).
    const page = await call('ListRuns', { page_size: PAGE_SIZE, page_token: token, parent_only: false });
    check(page.runs.length <= PAGE_SIZE, `ListRuns returned ${page.runs.length} > ${PAGE_SIZE} runs`);
    listed.push(...page.runs);
    token = page.next_page_token;
  } while (token);
  const ids = listed.map((r) => r.id);
  check(new Set(ids).size === ids.length, `ListRuns pages repeat a run: ${ids}`);

  const runs = {};
  for (const summary of listed) {
    const { run } = await call('GetRun', { run_id: summary.id });
    check(run.id === summary.id, `GetRun(${summary.id}) returned run ${run.id}`);
    check(runStatuses.has(run.status), `GetRun(${run.id}).status ${run.status} is no RunStatus`);
    check(run.status === summary.status, `GetRun and ListRuns disagree on ${run.id}'s status`);
    // GetRunStatus: the same run; its status differs only for a run with a
    // failed task and none pending or running (reported FAILED).
    const polled = (await call('GetRunStatus', { run_id: run.id })).run;
    check(polled.id === run.id && runStatuses.has(polled.status), `GetRunStatus(${run.id})`);

    const tasks = [];
    token = '';
    do {
      const page = await call('GetRunTasks', { run_id: run.id, page_token: token });
      tasks.push(...page.tasks);
      token = page.next_page_token;
    } while (token);
    for (const task of tasks) {
      check(task.run_id === run.id, `task ${task.id} of ${run.id} says run ${task.run_id}`);
      check(taskStatuses.has(task.status), `task ${task.id}.status ${task.status} is no TaskStatus`);
    }
    check(tasks.length === run.task_count, `${run.id}: ${tasks.length} tasks, task_count ${run.task_count}`);

    const { runs: children } = await call('GetChildRuns', { run_id: run.id });
    for (const child of children) {
      check(child.parent_run_id === run.id, `child ${child.id} of ${run.id} has parent ${child.parent_run_id}`);
    }
    // WatchRun: the current state first; the stream ends after a terminal
    // one. A run still going is watched for its first message only, so
    // that the client finishes whatever the runs are doing.
    const watched = await stream('WatchRun', { run_id: run.id }, !TERMINAL.has(run.status));
    check(watched.length >= 1 && watched[0].run.id === run.id, `WatchRun(${run.id}) sent no run`);
    const last = watched[watched.length - 1].run.status;
    check(
      TERMINAL.has(last) || !TERMINAL.has(run.status),
      `WatchRun(${run.id}) ended on ${last} while the run is ${run.status}`,
    );

    runs[run.id] = {
      status: run.status,
      tasks: tasks.length,
      task_statuses: tasks.map((t) => t.status),
      children: children.map((c) => c.id),
      parent: run.parent_run_id ?? null,
    };
  }

  let unwatchable = null;
  try {
    await stream('WatchRun', { run_id: 'R999999999' });
  } catch (error) {
    unwatchable = error;
  }
  check(unwatchable && unwatchable.code === grpc.status.NOT_FOUND, 'WatchRun(R999999999) is not NOT_FOUND');

  const missing = await failure('GetRun', { run_id: 'R999999999' });
  check(missing.code === grpc.status.NOT_FOUND, `GetRun(R999999999): code ${missing.code}, not NOT_FOUND`);
  const malformed = await failure('GetRun', { run_id: 'not-a-run' });
  check(
    malformed.code === grpc.status.INVALID_ARGUMENT && malformed.details.includes('run_id'),
    `GetRun(not-a-run): code ${malformed.code} "${malformed.details}", not INVALID_ARGUMENT on run_id`,
  );

  let deleted = null;
  if (options.delete) {
    const answer = await call('DeleteRun', { run_id: options.delete });
    check(answer && Object.keys(answer).length === 0, 'DeleteRun answered something else than {}');
    const gone = await failure('GetRun', { run_id: options.delete });
    check(gone.code === grpc.status.NOT_FOUND, `GetRun after DeleteRun(${options.delete}): code ${gone.code}`);
    deleted = options.delete;
  }
  client.close();

  const methods = Object.keys(RunService.service).sort();
  console.log(JSON.stringify({ ok: true, calls, methods, runs, deleted, errors: { missing: 'NOT_FOUND', malformed: 'INVALID_ARGUMENT' } }));
  console.error(`node client: ${calls} calls to ${options.address}, ${ids.length} runs, all checks passed`);
}

main().catch((error) => {
  const what = error instanceof CheckFailed ? 'check failed' : 'error';
  const code = error.code !== undefined ? ` (gRPC code ${error.code}: ${error.details})` : '';
  console.error(`node client: ${what}: ${error.message}${code}`);
  process.exit(1);
});
