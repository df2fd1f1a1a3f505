-- wrk script: POST a regeneration of a different plan (and its owner) on every request.
-- Args: <plans file> <first index> <wrk threads>. Each line of the file is "<plan id> <owner id>".
local plans = {}
local counter = 0
local step = 1
local body = '{"overrides": {"weeklyHours": 6, "learningStyle": "practice"}}'

local threads = 0

function setup(thread)
  thread:set("thread_id", threads)
  threads = threads + 1
end

function init(args)
  for line in io.lines(args[1]) do
    local plan, owner = line:match("(%S+) (%S+)")
    plans[#plans + 1] = {plan, owner}
  end
  counter = tonumber(args[2] or "0") + (thread_id or 0)
  step = tonumber(args[3] or "1")
end

function request()
  local entry = plans[(counter % #plans) + 1]
  counter = counter + step
  return wrk.format("POST", "/api/v1/plans/" .. entry[1] .. "/regenerate",
    {["Content-Type"] = "application/json", ["X-User-Id"] = entry[2]}, body)
end
