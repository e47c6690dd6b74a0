// Small helpers shared by the client's checks: a failed check, gRPC code
// names, and a failure expected from a call.
import { Code, ConnectError } from "@connectrpc/connect";

export class CheckFailed extends Error {}

export function check(condition: unknown, message: string): asserts condition {
  if (!condition) throw new CheckFailed(message);
}

// Connect names codes in PascalCase (Code.NotFound); gRPC, the server's logs
// and the other clients' outputs say NOT_FOUND.
export function codeName(code: Code): string {
  return Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

// The ConnectError a call must fail with; a success is a failed check.
export async function failure(what: string, call: () => Promise<unknown>): Promise<ConnectError> {
  try {
    await call();
  } catch (error) {
    return ConnectError.from(error);
  }
  throw new CheckFailed(`${what} succeeded, expected an error`);
}

// Deep equality of two JSON documents, with object keys in any order.
export function sameJson(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const ak = Object.keys(a);
  const bk = Object.keys(b);
  if (ak.length !== bk.length) return false;
  const ao = a as Record<string, unknown>;
  const bo = b as Record<string, unknown>;
  return ak.every((k) => Object.hasOwn(bo, k) && sameJson(ao[k], bo[k]));
}
