-- Replay pre-signed webhook requests round-robin, one per request.
--
--   wrk -t1 -c16 -d10s -s bench/wrk/replay.lua http://127.0.0.1:8080 -- requests.tsv /webhooks/stripe
--
-- Each line of the file is one request: tab-separated header names and values, then the
-- body last (`Name<TAB>value<TAB>...<TAB>body`). Requests are formatted once, in init, so
-- that request() only hands back a prepared string and wrk stays out of the way.
-- done() prints one JSON line (prefixed "RESULT ") for bench/ingest.py to parse.

local requests = {}
local count = 0
local index = 0

local function split(line)
  local fields = {}
  local start = 1
  while true do
    local tab = string.find(line, "\t", start, true)
    if not tab then
      fields[#fields + 1] = string.sub(line, start)
      return fields
    end
    fields[#fields + 1] = string.sub(line, start, tab - 1)
    start = tab + 1
  end
end

function init(args)
  local file, path = args[1], args[2]
  for line in io.lines(file) do
    local fields = split(line)
    local headers = {}
    for i = 1, #fields - 1, 2 do
      headers[fields[i]] = fields[i + 1]
    end
    count = count + 1
    requests[count] = wrk.format("POST", path, headers, fields[#fields])
  end
  if count == 0 then
    error("no requests in " .. file)
  end
end

function request()
  index = index % count + 1
  return requests[index]
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"duration_us": %d, "requests": %d, "bytes": %d, "status_errors": %d, ' ..
    '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.duration, summary.requests, summary.bytes, e.status,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
