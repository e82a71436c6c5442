-- wrk script: single-tile npy encodes, every tile distinct, results as one JSON line.
--
--   wrk -t1 -c64 -d6s -s bench/wrk_tiles.lua http://127.0.0.1:PORT -- TILE_FILE FIRST
--
-- TILE_FILE holds an npy header line and 3,072 noise bytes (bench/wrk.py writes it). Request n
-- of thread t sends that tile with its first 8 bytes replaced by (FIRST + n, t): distinct tiles,
-- across runs too when each run starts FIRST past the last one, so the latent cache and the
-- batcher's de-duplication never shortcut the model. done() prints the counts and wrk's own
-- latency percentiles on a line starting with "TESSERA_WRK ".

local threads = {}
local counter_id = 0

function setup(thread)
  counter_id = counter_id + 1
  thread:set("id", counter_id)
  table.insert(threads, thread)
end

local header, rest, next_n, thread_id
status_counts = {}
cached_tiles = 0

function init(args)
  local file = assert(io.open(args[1], "rb"))
  local data = file:read("*a")
  file:close()
  local tile_start = #data - 3072
  header = data:sub(1, tile_start)
  rest = data:sub(tile_start + 9)
  next_n = tonumber(args[2] or "0")
  thread_id = id
  wrk.method = "POST"
  wrk.path = "/v1/encode"
  wrk.headers["Content-Type"] = "application/x-npy"
  wrk.headers["Accept"] = "application/x-npy"
end

local function u32(n)
  return string.char(n % 256, math.floor(n / 256) % 256, math.floor(n / 65536) % 256, math.floor(n / 16777216) % 256)
end

function request()
  local body = header .. u32(next_n) .. u32(thread_id) .. rest
  next_n = next_n + 1
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  local key = tostring(status)
  status_counts[key] = (status_counts[key] or 0) + 1
  local cached = headers["x-tessera-cached"] or headers["X-Tessera-Cached"]
  if cached then
    cached_tiles = cached_tiles + tonumber(cached)
  end
end

function done(summary, latency, requests)
  local statuses, cached = {}, 0
  for _, thread in ipairs(threads) do
    for key, count in pairs(thread:get("status_counts")) do
      statuses[key] = (statuses[key] or 0) + count
    end
    cached = cached + thread:get("cached_tiles")
  end
  local parts = {}
  for key, count in pairs(statuses) do
    table.insert(parts, string.format('"%s": %d', key, count))
  end
  local e = summary.errors
  io.write(string.format(
    'TESSERA_WRK {"duration_us": %d, "requests": %d, "statuses": {%s}, "cached_tiles": %d, ' ..
    '"socket_errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p95": %d, "p99": %d, "mean": %.1f, "max": %d}}\n',
    summary.duration, summary.requests, table.concat(parts, ", "), cached,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.mean, latency.max))
end
