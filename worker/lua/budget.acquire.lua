-- budget.acquire: one slot of Promoter's request budget, for a call made outside the person scripts
-- (the NPS feedback poll).
-- KEYS: none.  ARGV: [1] now, [2] priority (PRIORITY.*).
-- Returns: 0 when granted, else {milliseconds to wait, why}.
return acquire(ARGV[2])
