-- test_attack13_policy.py: a route whose method is written in lower case, which no request
-- could ever reach (HTTP methods are case-sensitive; the parser takes upper case only).
return { routes = { ["get /status"] = function() return 200, "up\n" end } }
