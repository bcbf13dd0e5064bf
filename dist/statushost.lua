-- /etc/statushost/statushost.lua — the policy statushost.service runs.
--
-- As installed it is the default policy of the package (the seed's status sync).
-- Replace this file with your own policy, or edit a copy of the default:
--   cp /usr/share/statushost/scripts/default.lua /etc/statushost/statushost.lua
-- then `systemctl reload statushost` (new connections get the new policy).
return dofile("/usr/share/statushost/scripts/default.lua")
