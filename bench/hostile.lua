-- wrk script: postbacks to an operator running tests/plugins/hostile, each event an attack that
-- meets one of the sandbox's limits (fuel, a trap, the memory cap, the stack), in turn.
local threads = {}
local counter = 0
local attacks = {"loop", "trap", "allocate", "recurse"}

function setup(thread)
  thread:set("thread_id", #threads)
  table.insert(threads, thread)
end

function init(args)
  path = args[1]
  run = args[2] or "run"
end

function request()
  counter = counter + 1
  local attack = attacks[(counter % #attacks) + 1]
  local id = run .. "-" .. thread_id .. "-" .. counter
  return wrk.format("GET", path .. "&type=deposit&affiliate=aff1&customer=" .. run .. "-" .. thread_id .. "&id=" .. id .. "&attack=" .. attack)
end
