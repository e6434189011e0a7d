-- people.forget_messages: erase messages a forget found outside the identity indexes (accepted before
-- the indexes existed): see lib/forget.lua.
-- KEYS: none.  ARGV: [1] now, [2..] refs.
-- Returns: JSON {messages = how many were erased, emails = their survey emails}.
local emails, forgotten = {}, 0
for i = 2, #ARGV do
  if forget_message(ARGV[i], emails) then forgotten = forgotten + 1 end
end
return cjson.encode({messages = forgotten, emails = emails})
