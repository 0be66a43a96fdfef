-- wrk script (validation only): after the run, print wrk's latency percentiles
-- (microseconds), how many latency samples wrk kept, and the share of them at or
-- above 50 ms, on one line that stall-co.sh parses.
--
-- wrk 4.1 does not keep one latency per response: it samples a calibrated
-- number per interval and, for intervals with fewer responses than that, adds
-- "missed" samples equal to the largest latency seen. The sample count shows it.
done = function(summary, latency, requests)
    -- latency(i) is the i-th smallest sample (0 past the last one): find the count.
    local lo, hi = 0, 1
    while hi < 2^40 and latency(hi) > 0 do lo = hi; hi = hi * 2 end
    while hi - lo > 1 do
        local mid = math.floor((lo + hi) / 2)
        if latency(mid) > 0 then lo = mid else hi = mid end
    end
    -- Share of samples at or above 50 ms, by bisecting the percentile.
    local a, b = 0.0, 100.0
    for _ = 1, 50 do
        local m = (a + b) / 2
        if latency:percentile(m) < 50000 then a = m else b = m end
    end
    io.write(string.format(
        "wrk-latency-us p50 %d p90 %d p99 %d p99.9 %d p99.99 %d max %d requests %d samples %d slow_share %.4f\n",
        latency:percentile(50), latency:percentile(90), latency:percentile(99),
        latency:percentile(99.9), latency:percentile(99.99), latency.max,
        summary.requests, lo, 100 - a))
end
