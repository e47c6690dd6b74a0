-- wrk script: GET a path chosen at random (per request) from a list, and
-- print one machine-readable summary line. Used by bench/run.py:
--
--   wrk -t1 -c16 -d10s -s bench/wrk_paths.lua http://127.0.0.1:PORT -- IDS TEMPLATE SEED
--
-- IDS: a file with one run id a line ("-" for none); TEMPLATE: the path, with
-- {id} replaced by a run id (e.g. /run/{id}/); SEED: the random seed, the same
-- for both sides of a comparison so that both fetch the same sequence of runs.

local requests_ = {}
local count = 0

function init(args)
  local ids, template, seed = args[1], args[2], tonumber(args[3] or "1")
  if ids == nil or ids == "-" then
    count = 1
    requests_[1] = wrk.format("GET", template)
  else
    for line in io.lines(ids) do
      if line ~= "" then
        count = count + 1
        local path = string.gsub(template, "{id}", line)
        requests_[count] = wrk.format("GET", path)
      end
    end
  end
  math.randomseed(seed)
end

function request()
  return requests_[math.random(count)]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d bytes=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d " ..
    "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
