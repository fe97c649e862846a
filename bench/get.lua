-- wrk -t2 -c16 -d20s -s bench/get.lua --latency BASE_URL   (BASE_URL ends in the FHIR base path)
-- Reads Observation/perf-NNNN at random (fixed seed) and prints one summary line.
math.randomseed(42)
local base = nil
init = function(args)
  base = wrk.path:gsub("/$", "")
end
local headers = {["Accept"] = "application/fhir+json"}
local token = os.getenv("TRIALBRIDGE_TOKEN")
if token then headers["Authorization"] = "Bearer " .. token end
request = function()
  return wrk.format("GET", string.format("%s/Observation/perf-%04d", base, math.random(1, 1000)), headers)
end
done = function(summary, latency, requests)
  io.write(string.format("WRK n=%d errors(status)=%d rps=%.1f p50=%.2fms p99=%.2fms\n", summary.requests, summary.errors.status,
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
