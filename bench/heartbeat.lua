-- wrk script of the heartbeat benchmark: POST a heartbeat (the SDK's body) with the owner's bearer token, and print
-- one JSON line of totals and latency percentiles (microseconds) when done. BENCH_TOKEN: the owner's token.
wrk.method = "POST"
wrk.body = '{"tasks_processing": 4, "tasks_completed": 12, "workers": 8}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, "write_errors": %d, ' ..
    '"status_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
