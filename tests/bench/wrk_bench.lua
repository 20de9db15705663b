-- wrk script for the fleetd benchmarks (tests/bench/loadgen.py runs it).
--
-- BENCH_REQUESTS: a file of "token<TAB>json body" lines; each becomes a POST to wrk's
--   URL path with "Authorization: Bearer <token>". Requests are built once per thread in
--   init() and rotated over, so the load generator spends nothing on formatting.
-- BENCH_CONTENT_TYPE: those POSTs' Content-Type (default application/json), e.g. application/proto
--   for binary protobuf bodies (which then must hold no tab or newline byte).
-- BENCH_AUTH: without BENCH_REQUESTS, a GET of the URL with this Authorization header.
-- BENCH_GETS: a file of "authorization<TAB>path" lines; each becomes a GET of that path (on wrk's
--   host) with that Authorization header, e.g. hawkBit DDI polls with per-device TargetTokens.
-- done() prints one line "BENCH_JSON {...}" that the runner parses.

local next_id = 0

function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
end

local reqs = {}
local n = 0
local i = 0

function init(args)
   local gets = os.getenv("BENCH_GETS")
   if gets and gets ~= "" then
      local f = assert(io.open(gets, "r"))
      for line in f:lines() do
         local auth, path = line:match("^([^\t]*)\t(.*)$")
         if auth then
            n = n + 1
            reqs[n] = wrk.format("GET", path, {["Authorization"] = auth})
         end
      end
      f:close()
      assert(n > 0, "no requests in " .. gets)
      i = ((id or 0) * 7919) % n
      return
   end
   local file = os.getenv("BENCH_REQUESTS")
   if not file or file == "" then
      local headers = {}
      local auth = os.getenv("BENCH_AUTH")
      if auth and auth ~= "" then headers["Authorization"] = auth end
      reqs[1] = wrk.format("GET", nil, headers)
      n = 1
      return
   end
   local content_type = os.getenv("BENCH_CONTENT_TYPE")
   if not content_type or content_type == "" then content_type = "application/json" end
   local f = assert(io.open(file, "rb"))
   for line in f:lines() do
      local token, body = line:match("^([^\t]*)\t(.*)$")
      if token then
         n = n + 1
         reqs[n] = wrk.format("POST", nil, {
            ["Content-Type"] = content_type,
            ["Authorization"] = "Bearer " .. token,
         }, body)
      end
   end
   f:close()
   assert(n > 0, "no requests in " .. file)
   -- Threads start at different places so that they do not send the same devices in step.
   i = ((id or 0) * 7919) % n
end

function request()
   i = i % n + 1
   return reqs[i]
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"duration_us":%d,"requests":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,' ..
      '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
      '"max_us":%d,"mean_us":%.1f}\n',
      summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
