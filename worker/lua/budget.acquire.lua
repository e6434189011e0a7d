-- One slot of Promoter's request budget. ARGV[2] priority ('high' | 'low').
-- Returns 0 when granted, else {milliseconds to wait, why}.
return acquire(ARGV[2])
