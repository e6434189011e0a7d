-- deadletters.bury: give up on a message. A dead letter keeps why, Promoter's last answer and the
-- evidence; the event itself stays beside the status record until it is replayed or dropped.
-- KEYS: none.  ARGV: [1] now, [2] ref, [3] reason, [4] last response, [5] evidence (JSON or '').
-- Returns: the message's state afterwards (a final state is never overwritten: only 'dead' means
-- this call buried it, unless it was dead already).
return bury(ARGV[2], ARGV[3], ARGV[4], ARGV[5]) or ''
