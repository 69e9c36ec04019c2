-- wrk script: unique postbacks (a deposit, then trades) for many customers of one operator.
-- Each wrk thread numbers its own events, so no id repeats across threads.
local threads = {}
local counter = 0

function setup(thread)
  thread:set("thread_id", #threads)
  table.insert(threads, thread)
end

function init(args)
  path = args[1]
  -- Each run numbers its events apart, so a second run on the same ledger repeats no id.
  run = args[2] or "run"
end

function request()
  counter = counter + 1
  local customer = run .. "-" .. thread_id .. "-" .. (counter % 10000)
  local id = run .. "-" .. thread_id .. "-" .. counter
  if counter <= 10000 then
    return wrk.format("GET", path .. "&type=deposit&amount=100.00&currency=USD&affiliate=aff1&customer=" .. customer .. "&id=" .. id)
  end
  return wrk.format("GET", path .. "&type=trade&lots=2.5&customer=" .. customer .. "&id=" .. id)
end

-- wrk's --latency table stops at p99; the tail an operator's burst meets is p99.9.
function done(summary, latency, requests)
  io.write(string.format("percentiles: p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency:percentile(99.9) / 1000))
end
