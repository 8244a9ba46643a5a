-- wrk script: print wrk's own counters on one line so that bench/web-static/results.py can check
-- every run (byte count per response, status and socket errors), not just the requests/s.
-- Only `done` is defined, so wrk runs no Lua per request and the load is the same as without it.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKRESULT requests=%d bytes=%d duration_us=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.bytes, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout))
end
