-- returns a string, not the policy table
return "policy"
