-- wrk script of bench/serving.py: POSTs the JSON bodies of a file (one a line) in turn, each thread from its own place,
-- and prints the results as one JSON line when done.
--   wrk -t 2 -c 32 -d 10s -s bench/serving.lua http://127.0.0.1:PORT/predict -- BODIES_FILE

local count = 0

function setup(thread)
   count = count + 1
   thread:set("id", count)
end

function init(args)
   prepared = {}
   local headers = {["Content-Type"] = "application/json"}
   for body in io.lines(args[1]) do prepared[#prepared + 1] = wrk.format("POST", nil, headers, body) end
   next_request = (id * 37) % #prepared + 1  -- threads start at different bodies
end

function request()
   local r = prepared[next_request]
   next_request = next_request % #prepared + 1
   return r
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format('{"requests": %d, "duration_us": %d, "p50_us": %.0f, "p95_us": %.0f, "p99_us": %.0f, '
      .. '"non2xx": %d, "socket_errors": %d}\n', summary.requests, summary.duration, latency:percentile(50),
      latency:percentile(95), latency:percentile(99), e.status, e.connect + e.read + e.write + e.timeout))
end
