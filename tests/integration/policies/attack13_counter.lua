-- test_attack13_policy.py: GET /inc adds math.maxinteger to jobs_started.
local host = require "statushost"
return { routes = { ["GET /inc"] = function() host.metrics.inc("jobs_started", math.maxinteger) return 200 end } }
