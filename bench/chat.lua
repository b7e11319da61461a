-- wrk script of `make bench`: POST chat completions, spread over API keys, optionally paced.
--
-- Environment (bench/run.py sets it):
--   BENCH_BODY   the JSON request body
--   BENCH_KEYS   comma-separated bearer tokens; request i uses key i mod n ("" = none)
--   BENCH_RATE   requests per second for the whole run (0 = as fast as possible); with one
--                wrk thread, delay() hands out send slots on an absolute schedule, so the
--                rate does not drift with latency (an open-loop load as long as a
--                connection is free, which bench/run.py sizes for)
-- done() prints one line: BENCH_RESULT {json} with the counts and the latency percentiles
-- in microseconds.

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local body = os.getenv("BENCH_BODY") or '{"model":"gpt-4o-mini","messages":[]}'
local keys = {}
for key in string.gmatch(os.getenv("BENCH_KEYS") or "", "[^,]+") do
  keys[#keys + 1] = key
end
local rate = tonumber(os.getenv("BENCH_RATE") or "0") or 0
local requests = {}
local counter = 0
local interval = rate > 0 and 1000 / rate or 0
local next_at = nil

function init(args)
  local n = math.max(#keys, 1)
  for i = 1, n do
    local headers = { ["Content-Type"] = "application/json" }
    if #keys > 0 then
      headers["Authorization"] = "Bearer " .. keys[i]
    end
    requests[i] = wrk.format("POST", "/v1/chat/completions", headers, body)
  end
end

function request()
  counter = counter + 1
  return requests[(counter % #requests) + 1]
end

if rate > 0 then
  function delay()
    local now = now_ms()
    if next_at == nil or next_at < now - 1000 then
      next_at = now
    end
    next_at = next_at + interval
    local wait = next_at - now
    if wait < 0 then
      return 0
    end
    return math.floor(wait + 0.5)
  end
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
