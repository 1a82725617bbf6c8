-- wrk script for one benchmarked route.
--
-- Arguments (after `--`): METHOD PATH MODE FILE THREADS BODY [HEADER ...]
--   MODE "static": every request is the same (FILE is "-").
--   MODE "bearer": each request sends `Authorization: Bearer <line>`, lines in rotation.
--   MODE "body":   each request sends <line> as its body, lines in rotation.
--   MODE "once":   like "body", but each line is used at most once (single-use credentials
--                  such as refresh tokens); when a thread runs out it says so in its count.
--   MODE "dpop":   like "once", each line "<token> <proof>": sends `Authorization: DPoP <token>`
--                  and `DPoP: <proof>` (RFC 9449 proofs are single use).
--   THREADS: wrk's -t (init() runs before all threads exist, so it cannot count them).
--   BODY: a body sent with every request in "static" and "bearer" modes ("-" for none).
--   HEADER: "Name: value" pairs sent with every request.
-- Each wrk thread takes every n-th line (n = thread count), so no two threads share a line.
-- done() prints one line, "BENCH_JSON {...}", that the driver parses.

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local method, path, mode, body
local headers = {}
local lines = {}
local cursor = 0
non2xx = 0
exhausted = 0

local function read_lines(file, tid, nthreads)
  local picked = {}
  local index = 0
  for line in io.lines(file) do
    if index % nthreads == tid then
      table.insert(picked, line)
    end
    index = index + 1
  end
  return picked
end

function init(args)
  method, path, mode = args[1], args[2], args[3]
  if args[6] ~= "-" then
    body = args[6]
  end
  for i = 7, #args do
    local name, value = string.match(args[i], "^([^:]+):%s*(.*)$")
    headers[name] = value
  end
  if mode ~= "static" then
    lines = read_lines(args[4], tid, tonumber(args[5]))
    if #lines == 0 then
      error("no lines for this thread in " .. args[4])
    end
  end
end

function request()
  if mode == "static" then
    return wrk.format(method, path, headers, body)
  end
  cursor = cursor + 1
  if cursor > #lines and (mode == "once" or mode == "dpop") then
    exhausted = exhausted + 1 -- a reused single-use line: it will fail, and the driver says why
  end
  local line = lines[(cursor - 1) % #lines + 1]
  if mode == "bearer" then
    headers["Authorization"] = "Bearer " .. line
    return wrk.format(method, path, headers, body)
  end
  if mode == "dpop" then
    local token, proof = string.match(line, "^(%S+) (%S+)$")
    headers["Authorization"] = "DPoP " .. token
    headers["DPoP"] = proof
    return wrk.format(method, path, headers, body)
  end
  return wrk.format(method, path, headers, line)
end

function response(status, _headers, _body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, _requests)
  local bad, used_up = 0, 0
  for _, thread in ipairs(threads) do
    bad = bad + (thread:get("non2xx") or 0)
    used_up = used_up + (thread:get("exhausted") or 0)
  end
  local e = summary.errors
  local parts = {
    string.format('"requests": %d', summary.requests),
    string.format('"duration_us": %d', summary.duration),
    string.format('"non2xx": %d', bad),
    string.format('"exhausted": %d', used_up),
    string.format('"socket_errors": %d', e.connect + e.read + e.write + e.timeout),
    string.format('"latency_mean_us": %.1f', latency.mean),
    string.format('"latency_max_us": %d', latency.max),
  }
  for _, p in ipairs({ 50, 90, 99 }) do
    table.insert(parts, string.format('"latency_p%d_us": %d', p, latency:percentile(p)))
  end
  io.write("BENCH_JSON {" .. table.concat(parts, ", ") .. "}\n")
end
