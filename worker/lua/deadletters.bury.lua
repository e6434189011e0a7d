-- Give up on a message: a dead letter keeps why, Promoter's last answer and the evidence, and the
-- event itself stays beside the status record until the dead letter is replayed or dropped.
-- ARGV[2] ref, [3] reason, [4] last response, [5] evidence (JSON object or '').
-- Returns 1, or 0 when the message was already final (a late failure never overwrites it).
return bury(ARGV[2], ARGV[3], ARGV[4], ARGV[5]) and 1 or 0
