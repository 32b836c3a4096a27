-- wrk: GET /transfers/{id} as the transfer's sender.
-- Argument after `--`: a file of lines "transaction_id token".
local transfers = {}
local next_thread = 0

function setup(thread)
  next_thread = next_thread + 1
  thread:set("thread_id", next_thread)
end

function init(args)
  for line in io.lines(args[1]) do
    local id, token = line:match("^(%S+) (%S+)$")
    transfers[#transfers + 1] = { id = id, token = token }
  end
  math.randomseed(os.time() + thread_id * 7919)
end

function request()
  local transfer = transfers[math.random(#transfers)]
  return wrk.format("GET", "/transfers/" .. transfer.id,
    { ["Authorization"] = "Bearer " .. transfer.token })
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d %d %d\n",
    summary.requests, errors.connect + errors.read + errors.write + errors.timeout,
    errors.status, summary.duration, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
