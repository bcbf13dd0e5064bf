-- test_attack13_policy.py: on_config answers with Lua's shape of a failure, nil, "why".
return {
  on_config = function(cfg)
    if cfg.port_ok ~= true then return nil, "attack13: port_ok must be set" end
  end,
}
