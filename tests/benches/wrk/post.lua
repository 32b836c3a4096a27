-- wrk: POST /transfers as the sender, each request with its own Idempotency-Key.
-- Arguments after `--`: a file of bearer tokens (line N is user N's), a key prefix unique to the run.
local counter = 0
local tokens = {}
local prefix = ""
local next_thread = 0

function setup(thread)
  next_thread = next_thread + 1
  thread:set("thread_id", next_thread)
end

function init(args)
  for line in io.lines(args[1]) do
    tokens[#tokens + 1] = line
  end
  prefix = args[2]
  math.randomseed(os.time() + thread_id * 7919)
end

function request()
  counter = counter + 1
  local sender = math.random(#tokens)
  local receiver = sender % #tokens + 1
  local body = string.format(
    '{"sender_id":%d,"receiver_id":%d,"amount":"0.01","currency":"USD"}', sender, receiver)
  local headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. tokens[sender],
    ["Idempotency-Key"] = string.format("%s-%d-%d", prefix, thread_id, counter),
  }
  return wrk.format("POST", "/transfers", headers, body)
end

-- One machine-readable line: requests, socket errors, non-2xx, duration (µs), latency
-- p50/p99/p99.9/max (µs).
function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d %d %d\n",
    summary.requests, errors.connect + errors.read + errors.write + errors.timeout,
    errors.status, summary.duration, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
