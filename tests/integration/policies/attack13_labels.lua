-- test_attack13_policy.py: host.metrics.define with label names Prometheus or the list shape
-- refuses; the LABELS environment variable picks the case (see the test).
local host = require "statushost"
local cases = {
  reserved = {"__name__"},                 -- renames every sample of the metric
  hole = {[1] = "job", [3] = "reason"},    -- "reason" past a hole
  extra = {"job", reason = true},          -- a key that is not a list entry
  ok = {"job", "reason"},
}
host.metrics.define("attack13_labelled", "counter", "labels of every shape",
                    cases[os.getenv("ATTACK13_LABELS")])
return {}
