#!/usr/bin/env bash
# Runs one conformance vector through the guest under the plain `wasmtime` CLI, outside transferd:
# the guest is composed (`wac plug`) with tests/provider, a component that answers the guest's
# imports from the vector, and its handler is called with `wasmtime run --invoke`.
#
#   scripts/vector-wasmtime.sh [tests/vectors/NAME.json]      (default: usd-accepted)
#
# Prints wasmtime's WAVE result and the outcome as canonical JSON ({"calls":[…],"result":…}),
# then exits 1 unless the result kind, the full result and the calls all match `expected`.
# Needs wasmtime 48 and wac on PATH (cargo install wasmtime-cli --version 48.0.8 --locked;
# cargo install wac-cli --locked) and python3 (WAVE encoding and decoding).
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

vector="${1:-$TRANSFERD_ROOT/tests/vectors/usd-accepted.json}"
[ -f "$vector" ] || vector="$TRANSFERD_ROOT/$vector" # also accept paths relative to the checkout
[ -f "$vector" ] || { log "no vector file: ${1:-}"; exit 2; }
for tool in wasmtime wac python3; do
  command -v "$tool" >/dev/null || { log "$tool is not on PATH"; exit 2; }
done

# The guest exactly as transferd builds it, and the provider in the same target directory.
build_guest
(cd "$TRANSFERD_ROOT/tests/provider" && cargo build --release --target wasm32-wasip2 --quiet)
provider="$CARGO_TARGET_DIR/wasm32-wasip2/release/transferd_vector_provider.wasm"

# `wac plug` fills every guest import the provider exports; the WASI imports of both stay
# imports, and wasmtime run supplies them.
work="$CARGO_TARGET_DIR/vector-wasmtime"
mkdir -p "$work"
composed="$work/composed.wasm"
wac plug --plug "$provider" "$TRANSFERD_GUEST" -o "$composed"

# The call in WAVE. wasmtime 48 names an interface export `<package>/<interface>.<func>@<version>`
# (its wit-parser ItemName syntax; a `#` separator does not parse).
call="$(python3 - "$vector" <<'PY'
import json, sys

v = json.load(open(sys.argv[1], encoding="utf-8"))

def string(text):
    # WAVE strings take any char but `\`, `"` and newline raw; escape those and other controls.
    named = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return '"' + "".join(
        named.get(ch) or ("\\u{%x}" % ord(ch) if ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F else ch)
        for ch in text
    ) + '"'

def option(value, encode):
    return "none" if value is None else f"some({encode(value)})"

c, r = v["context"], v["request"]
ctx = (f"{{transaction-id: {string(c['transaction_id'])}, received-at-ms: {c['received_at_ms']}, "
       f"principal: {option(c['principal'], str)}, guest-version: {string(c['guest_version'])}}}")
# json.load keeps an object's order: the metadata's entries go as written.
metadata = ", ".join(f"({string(k)}, {string(val)})" for k, val in (r.get("metadata") or {}).items())
req = (f"{{sender-id: {r['sender_id']}, receiver-id: {r['receiver_id']}, amount: {string(r['amount'])}, "
       f"currency: {string(r['currency'])}, description: {option(r.get('description'), string)}, "
       f"phase: {option(r.get('phase'), string)}, expires-in-s: {option(r.get('expires_in_s'), str)}, "
       f"metadata: [{metadata}]}}")
print(f"transferd:transfer/handler.initiate-transfer@0.3.0({ctx}, {req})")
PY
)"

log "vector $(basename "$vector"), $(wasmtime --version)"
log "wasmtime run --env TRANSFERD_VECTOR=<vector> --invoke '$call' $composed"
status=0
wasmtime run --env TRANSFERD_VECTOR="$(cat "$vector")" --invoke "$call" "$composed" \
  >"$work/stdout" 2>"$work/stderr" || status=$?
if [ "$status" -ne 0 ]; then
  cat "$work/stdout" "$work/stderr" >&2
  log "wasmtime exited with $status"
  exit 1
fi
# Anything on stderr other than the provider's `call` lines (warnings, guest output) is shown.
grep -v '^call ' "$work/stderr" >&2 || true
echo "wave: $(cat "$work/stdout")"

# Decode the WAVE result into the vectors' JSON shape and compare with `expected`.
python3 - "$vector" "$work/stdout" "$work/stderr" <<'PY'
import json, re, sys

v = json.load(open(sys.argv[1], encoding="utf-8"))
wave = open(sys.argv[2], encoding="utf-8").read().strip()
calls = [json.loads(line[5:]) for line in open(sys.argv[3], encoding="utf-8") if line.startswith("call ")]

class Wave:
    """Just enough of a WAVE reader for what wasmtime prints: records become objects with
    snake_case keys, `some(x)` x, `none` null, cases without payload strings, cases with
    payload (ok, err, variants) {case: payload}."""
    ESC = {"\\": "\\", "'": "'", '"': '"', "t": "\t", "n": "\n", "r": "\r"}

    def __init__(self, text):
        self.t, self.i = text, 0

    def peek(self):
        while self.i < len(self.t) and self.t[self.i] in " \t\r\n":
            self.i += 1
        return self.t[self.i:self.i + 1]

    def eat(self, ch):
        if self.peek() != ch:
            raise ValueError(f"expected {ch!r} at {self.i}: {self.t[self.i:self.i + 30]!r}")
        self.i += 1

    def seq(self, close, item):
        out = []
        while self.peek() != close:
            out.append(item())
            if self.peek() == ",":
                self.eat(",")
        self.eat(close)
        return out

    def value(self):
        ch = self.peek()
        if ch == '"':
            return self.string()
        if ch == "[":
            self.eat("[")
            return self.seq("]", self.value)
        if ch == "{":
            self.eat("{")
            if self.peek() == ":":  # `{:}` is the empty record
                self.eat(":")
                self.eat("}")
                return {}
            return dict(self.seq("}", self.field))
        m = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?").match(self.t, self.i)
        if m:
            self.i = m.end()
            return json.loads(m.group())
        label = self.label()
        if label in ("true", "false"):
            return label == "true"
        if label == "none":
            return None
        if self.peek() != "(":
            return label
        self.eat("(")
        payload = self.value()
        self.eat(")")
        return payload if label == "some" else {label: payload}

    def label(self):
        m = re.compile(r"%?[A-Za-z][A-Za-z0-9-]*").match(self.t, self.i)
        if not m:
            raise ValueError(f"unexpected {self.t[self.i:self.i + 30]!r}")
        self.i = m.end()
        return m.group().lstrip("%")

    def field(self):
        name = self.label().replace("-", "_")
        self.eat(":")
        return name, self.value()

    def string(self):
        self.eat('"')
        out = []
        while self.t[self.i] != '"':
            ch = self.t[self.i]
            if ch != "\\":
                out.append(ch)
                self.i += 1
            elif self.t[self.i + 1] == "u":  # \u{hex}
                end = self.t.index("}", self.i)
                out.append(chr(int(self.t[self.i + 3:end], 16)))
                self.i = end + 1
            else:
                out.append(self.ESC[self.t[self.i + 1]])
                self.i += 2
        self.i += 1
        return "".join(out)

def canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

def kind(result):
    # ok / err plus the rejection tag: "ok", "err:invalid", "err:insufficient-funds", …
    tag, body = next(iter(result.items()))
    if tag == "ok":
        return "ok"
    return "err:" + (body if isinstance(body, str) else next(iter(body)))

parser = Wave(wave)
result = parser.value()
if parser.peek():
    raise SystemExit(f"trailing text after the result: {wave[parser.i:]!r}")
print(canonical({"calls": calls, "result": result}))

expected = v["expected"]
checks = [
    ("result kind", kind(result), kind(expected["result"])),
    ("result", canonical(result), canonical(expected["result"])),
    ("calls", canonical(calls), canonical(expected["calls"])),
]
failed = False
for what, got, want in checks:
    if got != want:
        failed = True
        print(f"MISMATCH {what}:\n  got:      {got}\n  expected: {want}", file=sys.stderr)
print(f"{v['name']}: {'FAIL' if failed else 'ok'} ({kind(result)})", file=sys.stderr)
sys.exit(1 if failed else 0)
PY
