// Runs every conformance vector (tests/vectors; format in its README.md) against the guest
// component under jco, and prints what the native checker (guest/examples/vectors.rs) prints:
// `name canonical-json` per case on stdout with --print, `FAIL name: got …` and the summary on
// stderr.
//
//   node tests/jco/run.mjs [--print] [vectors-dir]
//
// The guest is $TRANSFERD_GUEST, or the release build under $CARGO_TARGET_DIR
// (default ~/.cache/transferd-target). It is transpiled into tests/jco/out/NAME/ (NAME: the
// file's name) when it changed, so several guests (tests/guests/velocity) keep their own.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import * as shim from '@bytecodealliance/preview2-shim';

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const print = args.includes('--print');
const vectorsDir = args.find((arg) => !arg.startsWith('--')) ?? join(here, '..', 'vectors');
const targetDir = process.env.CARGO_TARGET_DIR || join(homedir(), '.cache', 'transferd-target');
const wasmPath =
  process.env.TRANSFERD_GUEST || join(targetDir, 'wasm32-wasip2', 'release', 'transferd_guest.wasm');

const outDir = join(here, 'out', wasmPath.split(/[\\/]/).pop().replace(/\.wasm$/, ''));

/** Transpiles the guest into out/ unless out/ already holds this guest from this jco. */
function transpile(wasm) {
  if (!existsSync(wasm)) {
    throw new Error(`${wasm} is missing; build it with: cd guest && cargo build --release --target wasm32-wasip2`);
  }
  const out = outDir;
  const jco = JSON.parse(readFileSync(join(here, 'node_modules/@bytecodealliance/jco/package.json'), 'utf8'));
  const stamp = `${createHash('sha256').update(readFileSync(wasm)).digest('hex')} jco ${jco.version}\n`;
  const stampPath = join(out, 'stamp');
  if (existsSync(stampPath) && readFileSync(stampPath, 'utf8') === stamp) return out;
  rmSync(out, { recursive: true, force: true });
  // --instantiation: the imports are arguments of instantiate(), so each case gets its own.
  execFileSync(
    join(here, 'node_modules/.bin/jco'),
    ['transpile', wasm, '-o', out, '--name', 'guest', '--instantiation', 'async', '--quiet'],
    { stdio: 'inherit' },
  );
  writeFileSync(stampPath, stamp); // last, so an interrupted transpile is redone
  return out;
}

// The WASI interfaces std pulls in (the guest does no real I/O). The transpiled code looks
// imports up by unversioned name ('wasi:cli/terminal-input'), although its .d.ts lists them
// with versions: map the shim's camelCase interfaces to those names.
const wasi = {};
for (const [pkg, interfaces] of Object.entries(shim)) {
  for (const [name, implementation] of Object.entries(interfaces)) {
    if (!name.startsWith('_')) wasi[`wasi:${pkg}/${name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`] = implementation;
  }
}

/** A JSON number from an s64; the vectors keep integers within 2^53 - 1. */
function number(value) {
  const result = Number(value);
  if (!Number.isSafeInteger(result)) throw new Error(`${value} does not fit a JSON number exactly`);
  return result;
}

/** The imports answering as the vector recorded, and the calls made to them in order. */
function replay(imports) {
  const calls = [];
  const key = (accountId, currency) => `${accountId} ${currency}`;
  const balances = new Map((imports.balances ?? []).map((entry) => [key(entry.account_id, entry.currency), entry.available]));
  const lookupError = typeof imports.lookup_error === 'string' ? imports.lookup_error : null;
  const accounts = new Map((imports.accounts ?? []).map((entry) => [key(entry.account_id, entry.currency), entry]));
  const accountError = typeof imports.account_error === 'string' ? imports.account_error : null;
  // jco takes a returned {tag: 'ok' | 'err', val} as the import's result (a plain value means ok).
  let sent = { tag: 'ok', val: undefined };
  if (imports.publish === 'insufficient-funds') sent = { tag: 'err', val: { tag: 'insufficient-funds' } };
  else if (typeof imports.publish === 'object' && imports.publish !== null) {
    sent = { tag: 'err', val: { tag: 'unavailable', val: imports.publish.unavailable ?? '' } };
  }
  const utf8 = new TextDecoder(); // not fatal: U+FFFD for bad bytes, like String::from_utf8_lossy
  return {
    calls,
    imports: {
      'transferd:transfer/balance-lookup': {
        available(accountId, currency) {
          calls.push({ available: { account_id: number(accountId), currency } });
          if (lookupError !== null) return { tag: 'err', val: lookupError };
          const available = balances.get(key(accountId, currency));
          return { tag: 'ok', val: available == null ? undefined : BigInt(available) };
        },
      },
      'transferd:transfer/account-info': {
        lookup(accountId, currency) {
          calls.push({ account: { account_id: number(accountId), currency } });
          if (accountError !== null) return { tag: 'err', val: accountError };
          const recorded = accounts.get(key(accountId, currency)) ?? {};
          const limits = recorded.limits ?? {};
          const today = recorded.today ?? {};
          const available = balances.get(key(accountId, currency));
          const optional = (value) => (value == null ? undefined : BigInt(value));
          return {
            tag: 'ok',
            val: {
              available: optional(available),
              limits: {
                singleMaxMinor: optional(limits.single_max_minor),
                dailyMaxMinor: optional(limits.daily_max_minor),
                overdraftMinor: BigInt(limits.overdraft_minor ?? 0),
              },
              metadata: (recorded.metadata ?? []).map(([name, value]) => [name, value]),
              today: {
                outgoingMinor: BigInt(today.outgoing_minor ?? 0),
                outgoingCount: today.outgoing_count ?? 0,
                lastMinuteCount: today.last_minute_count ?? 0,
              },
            },
          };
        },
      },
      'transferd:transfer/publish': {
        send({ topic, key, payload, hold }) {
          calls.push({
            send: {
              topic,
              key,
              payload: utf8.decode(payload),
              hold: hold == null ? null : { account_id: number(hold.accountId), currency: hold.currency, amount_minor: number(hold.amountMinor) },
            },
          });
          return sent;
        },
      },
    },
  };
}

/** The README's REJECTION from jco's {tag, val}: the tags are already the README's names. */
function rejection({ tag, val }) {
  switch (tag) {
    case 'invalid':
      return { invalid: val.map(({ field, message, code }) => ({ field, message, code })) };
    case 'forbidden':
    case 'unavailable':
      return { [tag]: val };
    default:
      return tag;
  }
}

/** Object keys sorted, no whitespace, UTF-8; JSON.stringify escapes strings as serde_json does. */
function canonical(value) {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    return `{${Object.keys(value).sort().map((key) => `${JSON.stringify(key)}:${canonical(value[key])}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

async function run(instantiate, getCoreModule, vector) {
  const { calls, imports } = replay(vector.imports ?? {});
  const { handler } = await instantiate(getCoreModule, { ...wasi, ...imports });
  const { context, request } = vector;
  let result;
  try {
    const accepted = handler.initiateTransfer(
      {
        transactionId: context.transaction_id,
        receivedAtMs: BigInt(context.received_at_ms),
        principal: context.principal == null ? undefined : BigInt(context.principal),
        guestVersion: context.guest_version,
      },
      {
        senderId: BigInt(request.sender_id),
        receiverId: BigInt(request.receiver_id),
        amount: request.amount,
        currency: request.currency,
        description: request.description ?? undefined,
        phase: request.phase ?? undefined,
        expiresInS: request.expires_in_s == null ? undefined : BigInt(request.expires_in_s),
        // The object's entries in the order written (the vectors use no integer-like keys,
        // which JavaScript would move to the front).
        metadata: Object.entries(request.metadata ?? {}),
      },
    );
    result = { ok: { transaction_id: accepted.transactionId, amount_minor: number(accepted.amountMinor) } };
  } catch (error) {
    // An export's err arrives as a thrown ComponentError (not exported by the bindings) with the
    // rejection in .payload; anything else is a trap.
    if (!Object.hasOwn(error ?? {}, 'payload')) throw error;
    result = { err: rejection(error.payload) };
  }
  return { calls, result };
}

const { instantiate } = await import(pathToFileURL(join(transpile(wasmPath), 'guest.js')));
const compiled = new Map(); // each core module is compiled once and instantiated per case
const getCoreModule = (name) => {
  if (!compiled.has(name)) compiled.set(name, WebAssembly.compile(readFileSync(join(outDir, name))));
  return compiled.get(name);
};

let passed = 0;
let failed = 0;
for (const file of readdirSync(vectorsDir).filter((name) => name.endsWith('.json')).sort()) {
  let name = file;
  try {
    const vector = JSON.parse(readFileSync(join(vectorsDir, file), 'utf8'));
    name = vector.name;
    const actual = canonical(await run(instantiate, getCoreModule, vector));
    if (print) console.log(`${name} ${actual}`);
    if (vector.expected !== undefined && actual === canonical(vector.expected)) passed++;
    else {
      console.error(`FAIL ${name}: got ${actual}`);
      failed++;
    }
  } catch (error) {
    console.error(`FAIL ${name}: ${error}`);
    failed++;
  }
}
console.error(`jco: ${passed} passed, ${failed} failed`);
process.exitCode = failed > 0 ? 1 : 0;
