-- wrk script: webhook batches (POST /v1/operators/{op}/events, a JSON array) of `size` unique
-- events: first a deposit per customer, then trades, for 10,000 customers per wrk thread.
-- Authenticated with the operator's API key; every answer is sent once all are durable.
local threads = {}
local counter = 0

function setup(thread)
  thread:set("thread_id", #threads)
  table.insert(threads, thread)
end

function init(args)
  path = args[1]
  key = args[2]
  size = tonumber(args[3])
  run = args[4] or "run"
end

local function event()
  counter = counter + 1
  local customer = run .. "-" .. thread_id .. "-" .. (counter % 10000)
  local id = run .. "-" .. thread_id .. "-" .. counter
  if counter <= 10000 then
    return '{"id":"' .. id .. '","type":"deposit","customer":"' .. customer ..
      '","amount":"100.00","currency":"USD","affiliate":"aff1"}'
  end
  return '{"id":"' .. id .. '","type":"trade","customer":"' .. customer .. '","attributes":{"lots":"2.5"}}'
end

function request()
  local events = {}
  for i = 1, size do
    events[i] = event()
  end
  local headers = { ["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json" }
  return wrk.format("POST", path, headers, "[" .. table.concat(events, ",") .. "]")
end

-- wrk's --latency table stops at p99; the tail an operator's burst meets is p99.9.
function done(summary, latency, requests)
  io.write(string.format("percentiles: p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency:percentile(99.9) / 1000))
end
