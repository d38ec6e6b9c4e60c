"""The Lua scripts that make shared admission atomic in Redis.

Every decision is taken inside Redis, on the Redis server's clock (``TIME``, kept from running
backwards by the namespace's clock key: ``clock`` below), in one script call: clients whose
clocks disagree cannot disagree about the limits, and no read-modify-write can lose an update
under contention. Floats cross the Lua boundary as strings, because Redis
truncates Lua numbers to integers.

Per lane there are three keys: a hash (cooldown, GCRA times, learned limits, the adaptive
window, the retry budget, what the controllers learned), a sorted set of slot leases scored
by their expiry time, and a sorted set of the last second's admissions scored by their time
(ADMIT: what the fleet sent in the second before a 429).

Fields of the lane hash: ``cd`` cooldown until; ``tr``/``tt`` GCRA times of the request and
token buckets; ``lr``/``lt`` limits stated by headers; ``cw``/``ss``/``ld``/``wm`` the shared
AIMD window; ``rb`` the retry budget; ``n`` admissions so far; and what the controllers learned
(CONTROL): ``pr``/``pt`` the rpm/tpm paced at, ``pc`` the in-flight cap (``pp`` set while it is
provisional: taught by bare 429s that a rate explains as well, and not yet tested), ``pf`` the
floor, ``pl`` the rate a discovered pace climbs back to (what the key took when it was last
refused) and ``pla`` when that refusal's measurements began; ``os<k>``/``oc<k>`` (k: the
second mod 8) the key's successes answered in that second (RELEASE counts them, CONTROL
measures the key's accepted rate from them); ``as<k>``/``ac<k>`` and ``rs<k>``/``rc<k>``
(k: the tenth of a second mod 80) the key's admissions (ADMIT) and the refusals about the
rate of requests sent then (RELEASE): a discovery is measured on them (CONTROL); ``dr``
when the latest of those refusals came back (the request bucket is empty from then: ADMIT);
``nt`` tokens admitted so far; ``fp`` the most the fleet has had in flight answered (RELEASE),
``fa`` its successes so far, ``fs``/``ft`` those and the time at the latest admission
past ``fp`` (ADMIT: one more at a time); ``bq``/``tq`` where a budget counted down with no limit
stated runs out (admissions, tokens admitted: LEFT), ``bm`` the admission that statement is
about;
``we``/``wl``/``wu`` the fixed windows a provider counts requests in, where the lanes keep to
them: when the current one ends, their length, the requests that went into it (ADMIT);
``te``/``tl``/``tu`` the same for tokens (the tokens that went into it);
priority classes (ADMIT): ``d0``/``d1``/``d2`` until when some process has work waiting in
class interactive/batch/background, ``c1``/``c2`` the credit (owed admissions) of batch and
background.
"""

from __future__ import annotations

__all__ = [
    "ADMIT",
    "BUDGET",
    "CONTROL",
    "GATE",
    "HEARTBEAT",
    "LEARN",
    "LEFT",
    "RELEASE",
    "RENEW",
    "SPEND_RESERVE",
    "SPEND_SETTLE",
]

_PRELUDE = """
local function num(v, default)
  local n = tonumber(v)
  if n == nil then return default end
  return n
end
local function fmt(x) return string.format('%.6f', x) end
-- Count one in the tenth of a second of server time t, in a ring of 80 (8 s) of fields
-- <stamp><k>/<count><k> of the lane hash (KEYS[1]).
local function tally(stamp, count, t)
  local slot = math.floor(t * 10)
  local k = slot % 80
  if tonumber(redis.call('HGET', KEYS[1], stamp .. k)) == slot then
    redis.call('HINCRBY', KEYS[1], count .. k, 1)
  else
    redis.call('HSET', KEYS[1], stamp .. k, tostring(slot), count .. k, '1')
  end
end
-- The namespace's clock (a hash: 't' a recent time it gave, 's' the skew): the Redis
-- server's TIME, never running backwards. Every time stored here (buckets' arrival times,
-- cooldowns, windows, leases, holds) is a point on it, so a step back of the server's wall
-- clock (NTP at boot, a VM resumed) would put each of them that far ahead and stall
-- admissions as long; the step is taken into a skew added to TIME from then on. 't' is
-- written a tenth of a second apart at most (a write on every call doubled the cost of a
-- clock read), so the time given may go back by as much, which stalls nothing longer. A step
-- forward cannot be told from a pause and counts as one (buckets full, leases expired).
local function clock(key)
  local t = redis.call('TIME')
  local raw = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local c = redis.call('HMGET', key, 't', 's')
  local last, skew = num(c[1], 0), num(c[2], 0)
  local now = raw + skew
  local write = now > last + 0.1  -- (a new clock too: last 0)
  if now < last then
    skew = last - raw
    now = last
    write = true
  end
  if write then
    redis.call('HSET', key, 't', fmt(now), 's', fmt(skew))
    redis.call('EXPIRE', key, 604800)  -- a week: longer than the keys whose times it keeps
  end
  return now
end
local function lower(a, b)
  if a > 0 and b > 0 then return math.min(a, b) end
  if a > 0 then return a end
  return b
end
local function effective(configured, learned)
  if configured > 0 and learned > 0 then return math.min(configured, learned) end
  if configured > 0 then return configured end
  return learned
end
"""

ADMIT = (
    _PRELUDE
    + """
-- KEYS[1] lane hash, KEYS[2] slot leases (zset: lease -> expiry), KEYS[3] the clock,
-- KEYS[4] the lane's admissions of the last second (zset: lease -> time; optional)
-- ARGV: tokens, rpm, tpm (the caller's pace in force, 0: none), burst_s, utilisation,
--       fixed_limit (0: adaptive), initial, min, max, lease_id, lease_ttl_s, key_ttl_s,
--       cap (the caller's learned in-flight cap, 0: none), floor (slots its rate needs),
--       rank (the caller's class: 0 interactive, 1 batch, 2 background), min_share,
--       waiting here per class (3 numbers, the caller included), output tokens (the part of
--       the cost limited apart, charged to the output bucket; tokens is then the input
--       alone), otpm (the caller's output pace, 0: output not limited apart), ramp
--       window (what the start's ramp grew the caller's window to: silence before any
--       answer, and the ramp that goes on after answers that state nothing; 0: none; the
--       shared window rises to it, as a local one grows, until the first cut), the token
--       and output buckets' bursts in seconds (burst_s is the request bucket's; each as
--       the caller's lane has it), the request bucket's fixed windows (seconds until the
--       current one ends, length, budget, guard; zeros: none), the token bucket's (the same
--       four, then 1 when the first is the end as a time on this clock, not seconds from now),
--       the caller's mean answer time in seconds (0: none known; steps past the fleet's most
--       in flight are spaced by it), then the leases the caller released that RELEASE has
--       not freed yet (any number: freed here first)
-- -> {admitted 0/1, wait_s (-1: no free slot; -2: held back under the limit, for an answer
--     or a budget, not for a slot), in_flight, limit, now, admissions so far, tokens admitted
--     so far, edge (1: the last slot of the fleet's window where a server's cap would refuse:
--     a step past the fleet's most in flight answered, the last it lets go before an answer,
--     or the last under a learned cap), the key's admissions in the second up to this one
--     (this one included; -1 without KEYS[4]) (admitted only)}
-- Classes across the fleet: each caller states the classes it has work in (fresh for a
-- moment, longer while its head waits); a lower class goes while a higher one has work
-- anywhere only on its credit, min_share per admission made while it had work.
-- The pace is the fleet's (pr/pt, pushed by CONTROL; the caller's until one is), under the
-- limits headers stated: every caller judges the one bucket at one rate. (The lower of the
-- caller's and the fleet's starved a process whose pace lagged the others' recovery, as it
-- adopts the fleet's only when it exchanges: a lower rate sees the shared bucket fuller,
-- and the others took each opening first; one process of three waited 6 s.)
-- The adaptive limit is the shared window, raised to the floor
-- and bounded by the in-flight cap (the lower of the caller's and the fleet's).
local tokens = num(ARGV[1], 0)
local burst_s, util = num(ARGV[4], 0.5), num(ARGV[5], 1)
local fixed, initial = num(ARGV[6], 0), num(ARGV[7], 4)
local lo, hi = num(ARGV[8], 1), num(ARGV[9], 512)
local now = clock(KEYS[3])
local rank = math.floor(num(ARGV[15], 0))
local share = num(ARGV[16], 0.1)
local dm = redis.call('HMGET', KEYS[1], 'd0', 'd1', 'd2', 'c1', 'c2')
local demand = {num(dm[1], 0), num(dm[2], 0), num(dm[3], 0)}
local credit = {0, num(dm[4], 0), num(dm[5], 0)}
for k = 1, 3 do
  if num(ARGV[16 + k], 0) > 0 and demand[k] < now + 0.25 then
    demand[k] = now + 0.25
    redis.call('HSET', KEYS[1], 'd' .. (k - 1), fmt(demand[k]))
  end
end
local function waiting(wait_s)
  -- refused: the caller's class keeps its claim until it asks again
  local k = rank + 1
  if demand[k] < now + wait_s + 0.1 then
    redis.call('HSET', KEYS[1], 'd' .. rank, fmt(now + wait_s + 0.1))
  end
end
if rank > 0 and credit[rank + 1] < 0.999999 then
  for k = 1, rank do
    if demand[k] > now then
      waiting(0.02)
      return {0, fmt(0.02), '0', '0', fmt(now), '0'}
    end
  end
end
local h = redis.call(
  'HMGET', KEYS[1], 'cd', 'tr', 'tt', 'lr', 'lt', 'cw', 'pr', 'pt', 'pc', 'pf', 'to', 'dr',
  'ss', 'ct')
local function fleet_or(own, fleet)
  if fleet > 0 then return fleet end
  return own
end
local rpm = effective(fleet_or(num(ARGV[2], 0), num(h[7], 0)), num(h[4], 0))
local tpm = effective(fleet_or(num(ARGV[3], 0), num(h[8], 0)), num(h[5], 0))
local wait = 0
local cd = num(h[1], 0)
if cd > now then wait = cd - now end
local tr = math.max(num(h[2], 0), now)
local tt = math.max(num(h[3], 0), now)
local otokens, otpm = num(ARGV[20], 0), num(ARGV[21], 0)
local to = math.max(num(h[11], 0), now)
-- A bucket (GCRA) of per_min a minute, deep_s deep, at its theoretical arrival time tat:
-- seconds until cost fits, and the seconds each unit of cost moves tat.
local function bucket_wait(tat, cost, per_min, deep_s)
  local rate = per_min * util / 60
  local burst = math.max(1, rate * deep_s)
  if cost > burst then return tat - now, 1 / rate end  -- bigger than the burst: when full
  return tat + (cost - burst) / rate - now, 1 / rate
end
-- The same bucket's arrival time once a refusal at `since` left the provider's budget empty:
-- it holds nothing then, as a local lane's bucket drained by the refusal.
local function emptied(tat, since, per_min, deep_s)
  local rate = per_min * util / 60
  return math.max(tat, since + math.max(1, rate * deep_s) / rate)
end
-- What a fixed window ending at `ends` is taken to hold already when a fleet starts counting
-- it (what it took is not known): its budget less what the paced bucket would still let
-- through until it ends, no more (as a local lane's).
local function taken_at_switch(tat, per_min, deep_s, budget, ends)
  local rate = per_min * util / 60
  local level = math.max(1, rate * deep_s) - math.max(0, tat - now) * rate
  return budget - math.min(budget, math.max(0, level) + rate * math.max(0, ends - now))
end
local rint, tint, oint = 0, 0, 0
local w
local drained = num(h[12], 0)
-- A provider that counts requests in fixed windows (ARGV[25..28]: seconds until the caller's
-- current window ends, their length, a window's budget, the guard at a window's start; 0:
-- none) lets each window's budget go from its start: the fleet keeps one count per window
-- (we: when the current one ends, wu: what went into it), on the grid the first caller
-- stated (a new length restarts it). Paced evenly through 10-s windows instead, a fleet of
-- three took 0.82-0.91 of one process that spends each window from its start.
local wlen, wbudget = num(ARGV[26], 0), num(ARGV[27], 0)
local windowed = rpm > 0 and wlen > 0 and wbudget > 0
local wu = 0
if windowed then
  local g = redis.call('HMGET', KEYS[1], 'we', 'wl', 'wu')
  local we = num(g[1], 0)
  wu = num(g[3], 0)
  if we <= 0 or math.abs(num(g[2], 0) - wlen) > 1e-6 then
    we = now + num(ARGV[25], 0)
    wu = taken_at_switch(tr, rpm, burst_s, wbudget, we)
  end
  if now >= we then
    we = we + (math.floor((now - we) / wlen) + 1) * wlen
    wu = 0
  end
  -- a 429 about the rate in this window (RELEASE): the window is spent
  if drained > we - wlen then wu = math.max(wu, wbudget) end
  local guard = num(ARGV[28], 0)
  if now < we - wlen + guard then
    w = we - wlen + guard - now
  elseif wu + 1 > wbudget + 1e-9 then
    w = we + guard - now
  else
    w = 0
  end
  if w > wait then wait = w end
  redis.call('HSET', KEYS[1], 'we', fmt(we), 'wl', fmt(wlen), 'wu', fmt(wu))
elseif rpm > 0 then
  if drained > 0 then
    -- A 429 about the rate anywhere in the fleet (RELEASE) left the provider's window
    -- empty: so is the fleet's bucket from then, as a local lane drains its own. (Left
    -- full, the others spent its burst into the window that had just refused: nine more
    -- 429s within 60 ms of a fleet's first, on 1-s windows.)
    tr = emptied(tr, drained, rpm, burst_s)
  end
  w, rint = bucket_wait(tr, 1, rpm, burst_s)
  if w > wait then wait = w end
end
-- A provider that counts tokens in fixed windows (ARGV[29..32], as the request windows'):
-- each window's budget goes from its start, and no more (te: when the current one ends, tu:
-- the tokens that went into it). The shared bucket refilled continuously: filled again while
-- the gate waited out a refused window, it let its burst and the rate into the next one, half
-- a second's worth too many, and drew the next 429 (a fleet's 429 every ~1-3 s on 1-s windows).
local tlen, tbudget, guard = num(ARGV[30], 0), num(ARGV[31], 0), num(ARGV[32], 0)
local tburst_s = num(ARGV[23], burst_s)
local tu, tn, tlate = 0, 0, false
local g = nil
local seen = num(ARGV[29], 0)
if ARGV[33] ~= '1' then seen = now + seen end  -- (seconds from the caller's ask, not a time)
if tpm > 0 and tokens > 0 then
  g = redis.call('HMGET', KEYS[1], 'te', 'tl', 'tu', 'tn', 'tb', 'tg', 'tw')
  local stated_len = num(g[2], 0)
  if not (tlen > 0 and tbudget > 0) and stated_len > 0
      and now - num(g[7], 0) < 10 * stated_len then
    -- A caller whose own answers do not show the windows yet (or any more) keeps to those
    -- another stated lately: its admissions count in the windows too.
    tlen, tbudget, guard, seen = num(g[2], 0), num(g[5], 0), num(g[6], 0), num(g[1], 0)
  elseif tlen > 0 and tbudget > 0 then
    redis.call('HSET', KEYS[1], 'tb', fmt(tbudget), 'tg', fmt(guard), 'tw', fmt(now))
  end
end
local twindowed = g ~= nil and tlen > 0 and tbudget > 0
if twindowed then
  local te = num(g[1], 0)
  tu, tn = num(g[3], 0), num(g[4], 0)
  if te <= 0 or math.abs(num(g[2], 0) - tlen) > 1e-6 then
    te = seen
    tu = taken_at_switch(tt, tpm, tburst_s, tbudget, te)
  else
    -- Every caller sees the windows end a trip early (its send time plus the reset): the
    -- latest end any of them states, within half a window, is the nearest to the provider's.
    local d = (seen - te) % tlen
    if d > tlen / 2 then d = d - tlen end
    if d > 0 then te = te + d end
  end
  if now >= te then
    local passed = math.floor((now - te) / tlen) + 1
    te = te + passed * tlen
    -- a spend larger than a window: later ones repay it; what went in the last guard of the
    -- window before may have reached the provider in this one
    tu = math.max(0, tu - passed * tbudget)
    if passed == 1 then tu = tu + tn end
    tn = 0
  end
  if now < te - tlen + guard then
    w = te - tlen + guard - now
  elseif tu + tokens > tbudget + 1e-9 and not (tokens > tbudget and tu <= 1e-9) then
    local owed = tu - tbudget + math.min(tokens, tbudget)
    w = te + (math.max(1, math.ceil(owed / tbudget - 1e-9)) - 1) * tlen + guard - now
  else
    w = 0
  end
  if w > wait then wait = w end
  tlate = now >= te - guard
  redis.call('HSET', KEYS[1], 'te', fmt(te), 'tl', fmt(tlen), 'tu', fmt(tu), 'tn', fmt(tn))
elseif tpm > 0 and tokens > 0 then
  local ct = num(h[14], 0)
  if ct > 0 then
    -- A 429 about tokens (GATE) left the provider's budget empty until its hint: so is the
    -- fleet's bucket when the gate opens, as a local lane's at a window's start. (Full by
    -- then, it let its burst and the rate into the window that began, and drew the next 429:
    -- a fleet's 429 every ~1-3 s on 1-s token windows.)
    tt = emptied(tt, ct, tpm, tburst_s)
  end
  w, tint = bucket_wait(tt, tokens, tpm, tburst_s)
  if w > wait then wait = w end
end
if otpm > 0 and otokens > 0 then
  w, oint = bucket_wait(to, otokens, otpm, num(ARGV[24], burst_s))
  if w > wait then wait = w end
end
local limit
local capped = false  -- the limit is a learned in-flight cap (or its probe)
if fixed > 0 then
  limit = fixed
else
  local cw = num(h[6], initial)
  local silence = num(ARGV[22], 0)
  -- Only while the fleet's window was never cut: a process whose own ramp still runs (its
  -- answers judged nothing yet) must not undo another's cut (RELEASE sets ss).
  if silence > cw and h[13] == false then
    cw = math.min(hi, silence)
    redis.call('HSET', KEYS[1], 'cw', fmt(cw))
  end
  limit = math.floor(cw)
  -- The floor (the slots the rate needs) is the fleet's: one caller's higher floor raises
  -- it for all at once. Each caller's own floor in its own decision let a process whose
  -- answers showed more latency take every slot over the others' limit: one held 22 of
  -- 25 while two sat with 33-35 queued and none in flight.
  local floor, own_floor = num(h[10], 0), num(ARGV[14], 0)
  if own_floor > floor then
    floor = own_floor
    redis.call('HSET', KEYS[1], 'pf', tostring(own_floor))
  end
  limit = math.max(limit, floor)
  local cap = lower(num(ARGV[13], 0), num(h[9], 0))
  if cap > 0 and cap <= limit then
    limit = cap
    capped = true
  end
  limit = math.max(lo, math.min(hi, limit))
end
if wait > 0 then
  waiting(wait)
  return {0, fmt(wait), '0', tostring(limit), fmt(now), '0'}
end
-- The caller's releases still on their way (its RELEASE runs on its maintenance thread, a
-- few ms to tens of ms after the answer): those slots are free at the server already. Counted
-- as held, the fleet's count in flight ran ahead of the server's, and successes sent past an
-- in-flight cap (at the server's count under it) read as no cap there: the cap's refusals
-- then looked like noise (three lanes under a bare cap of 8 drew 12-41 429s in 1 run of 4).
for i = 35, #ARGV do redis.call('ZREM', KEYS[2], ARGV[i]) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', fmt(now))
local in_flight = redis.call('ZCARD', KEYS[2])
if in_flight >= limit then
  waiting(0.05)
  return {0, '-1', tostring(in_flight), tostring(limit), fmt(now), '0'}
end
-- Past the most the fleet has had in flight answered (fp, RELEASE), one more at a time: after
-- a success came back since the last step past it (fa: successes so far, fs at that step), or
-- spaced (ft: that step's time) so that the fleet's in flight at most doubles per mean answer
-- time (ARGV[34], the caller's), or per second if that is longer or not known yet, as a local
-- lane goes past its own peak (on answers alone, a process holding its first requests
-- unanswered waited forever). Slow start for the fleet as a whole: each process's window,
-- learned cap and floor let it go up to the limit at once, and three processes opening their
-- windows together overshot an in-flight cap
-- (the bench's inflight draws 1-6: 23 fleet 429s, 12 on a cap of 9, where one process drew
-- 6). Before any answer the start's window alone bounds the fleet, as it bounds one process.
-- Such a hold is not "no slot" (-2, as a local lane's: its window has room): answered as one,
-- every success grew the shared window as if requests waited for a slot, and the window ran
-- past what was in flight, so that no refusal of a cap took its last slot.
-- The fleet's edge (returned): the last slot where a server's cap would refuse, as a local
-- lane's last slot. A full window is one under a learned cap, or past the most the fleet had
-- in flight answered (before any answer, the start's window), and so is a step past that
-- most while the caller has more waiting (the hold binds it). A full window below that most
-- is not: the fleet had as many in flight answered. Nor is a step with nothing behind it:
-- a process sending one at a time stepped past the others' release still on its way (the
-- fleet's count 2 where the server had 1), and its 429 taught a cap of 1.
local full = in_flight + 1 >= limit
local edge = 0
if full and (capped or fixed > 0) then edge = 1 end
if fixed <= 0 then
  local p = redis.call('HMGET', KEYS[1], 'fp', 'fa', 'fs', 'ft')
  local peak = num(p[1], 0)
  if full and in_flight + 1 > peak then edge = 1 end
  if peak > 0 and in_flight + 1 > peak then
    if num(ARGV[17 + rank], 0) > 1 then edge = 1 end
    local doubling, mean = 1.0, num(ARGV[34], 0)
    if mean > 0 and mean < doubling then doubling = mean end
    local answers, spacing = num(p[2], 0), doubling / math.max(1, in_flight)
    if answers <= num(p[3], -1) and now < num(p[4], 0) + spacing then
      waiting(0.05)
      return {0, '-2', tostring(in_flight), tostring(limit), fmt(now), '0'}
    end
    redis.call('HSET', KEYS[1], 'fs', tostring(answers), 'ft', fmt(now))
  end
end
-- A budget the provider counts down with no limit stated (Azure's remaining, LEFT): what the
-- latest answer in admission order said was left, less what the fleet admitted after it, is
-- all that goes; with none left, one request at a time (its answer says whether a window
-- began; a 429's hint says when one does). Tokens keep a request's worth in hand.
local left = redis.call('HMGET', KEYS[1], 'bq', 'tq', 'n', 'nt')
local bq, tq = num(left[1], 0), num(left[2], 0)
local admissions, admitted_tokens = num(left[3], 0), num(left[4], 0)
if in_flight > 0 and ((bq > 0 and admissions + 1 > bq)
    or (tq > 0 and tokens > 0 and admitted_tokens + 2 * tokens > tq)) then
  waiting(0.05)
  return {0, '-2', tostring(in_flight), tostring(limit), fmt(now), '0'}
end
for k = 2, 3 do
  if demand[k] > now or k == rank + 1 then credit[k] = credit[k] + share else credit[k] = 0 end
end
if rank > 0 then credit[rank + 1] = math.max(0, credit[rank + 1] - 1) end
redis.call('HSET', KEYS[1], 'c1', fmt(credit[2]), 'c2', fmt(credit[3]))
if num(ARGV[17 + rank], 0) <= 1 then
  -- nothing more of its class waits here: its claim ends (others renew theirs as they ask)
  redis.call('HSET', KEYS[1], 'd' .. rank, fmt(now))
end
if windowed then redis.call('HSET', KEYS[1], 'wu', fmt(wu + 1)) end
if twindowed then
  redis.call('HSET', KEYS[1], 'tu', fmt(tu + tokens))
  if tlate then redis.call('HSET', KEYS[1], 'tn', fmt(tn + tokens)) end
end
if rint > 0 then redis.call('HSET', KEYS[1], 'tr', fmt(tr + rint)) end
if tint > 0 then redis.call('HSET', KEYS[1], 'tt', fmt(tt + tokens * tint)) end
if oint > 0 then redis.call('HSET', KEYS[1], 'to', fmt(to + otokens * oint)) end
redis.call('ZADD', KEYS[2], fmt(now + num(ARGV[11], 15)), ARGV[10])
local admitted = redis.call('HINCRBY', KEYS[1], 'n', 1)
if tokens > 0 then
  admitted_tokens = admitted_tokens + tokens
  redis.call('HSET', KEYS[1], 'nt', fmt(admitted_tokens))
end
tally('as', 'ac', now)  -- the key's admissions by time: a discovery is measured on them
-- What the key admitted in the second up to now, this one included: a bound from above on
-- what it sent in the second before any request admitted now (that second began no later),
-- however long since the caller's previous admission (its own count between them ran high
-- by that gap: a busy 429 after a quiet spell read as the fleet outrunning the stated rate).
-- By time, not by tenths: 1.1 s of a fleet paced at the stated rate with its burst ran past
-- the rate and the burst, and still closed the gate for a busy 429.
local in_second = -1
if KEYS[4] then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. fmt(now - 1))
  redis.call('ZADD', KEYS[4], fmt(now), ARGV[10])
  in_second = redis.call('ZCARD', KEYS[4])
  redis.call('EXPIRE', KEYS[4], 10)
end
local key_ttl = math.floor(num(ARGV[12], 3600))
redis.call('EXPIRE', KEYS[1], key_ttl)
redis.call('EXPIRE', KEYS[2], key_ttl)
return {1, '0', tostring(in_flight + 1), tostring(limit), fmt(now), tostring(admitted),
  fmt(admitted_tokens), edge, in_second}
"""
)

RELEASE = (
    _PRELUDE
    + """
-- KEYS[1] lane hash, KEYS[2] slot leases, KEYS[3] the clock
-- ARGV: lease_id, signal (0 neutral, 1 success, 2 back-pressure, 3 a 429 about the rate:
--       neutral, and counted by when it was sent), sent_at (server time),
--       in_flight_at_send, fixed (1: fixed limit, no AIMD), initial, min, max,
--       decrease_factor, utilisation_to_grow, token_delta, cfg_tpm, utilisation,
--       backlog (1: requests were queued for a slot here), output_delta (output tokens to
--       charge, negative: give back), otpm (the caller's output pace, 0: none), cut_to
--       (with back-pressure: the window swollen answers showed a queueing server serves,
--       which the window goes down to instead of decrease_factor of itself; 0: none)
local removed = redis.call('ZREM', KEYS[2], ARGV[1])
local now = clock(KEYS[3])
local signal = num(ARGV[2], 0)
if signal == 3 then
  tally('rs', 'rc', num(ARGV[3], now))
  redis.call('HSET', KEYS[1], 'dr', fmt(now))  -- the fleet's request bucket is empty (ADMIT)
  signal = 0
end
if signal == 1 then
  -- An answer (ADMIT steps past the fleet's most in flight once per answer), and that most
  -- in flight: what this request was sent with, answered without a refusal.
  redis.call('HINCRBY', KEYS[1], 'fa', 1)
  local at_send = num(ARGV[4], 0)
  if at_send > num(redis.call('HGET', KEYS[1], 'fp'), 0) then
    redis.call('HSET', KEYS[1], 'fp', tostring(math.floor(at_send)))
  end
  -- what the key accepted, per second of answers (CONTROL measures its rate from them)
  local sec = math.floor(now)
  local k = sec % 8
  if num(redis.call('HGET', KEYS[1], 'os' .. k), -1) == sec then
    redis.call('HINCRBY', KEYS[1], 'oc' .. k, 1)
  else
    redis.call('HSET', KEYS[1], 'os' .. k, tostring(sec), 'oc' .. k, '1')
  end
end
if num(ARGV[5], 0) == 0 and signal > 0 then
  local initial, lo, hi = num(ARGV[6], 4), num(ARGV[7], 1), num(ARGV[8], 512)
  local h = redis.call('HMGET', KEYS[1], 'cw', 'ss', 'ld', 'wm', 'pc')
  local cap = num(h[5], 0)
  if cap > 0 then hi = math.min(hi, cap + 1) end  -- growing past the cap only inflates it
  local cw, ss, ld, wm = num(h[1], initial), num(h[2], 1e18), num(h[3], 0), num(h[4], 1e18)
  if signal == 2 then
    -- at most once per round trip: answers to requests sent before the last cut don't cut
    if num(ARGV[3], 0) >= ld then
      local cut = math.max(lo, cw * num(ARGV[9], 0.7))
      local cut_to = num(ARGV[17], 0)
      if cut_to > 0 then cut = math.max(lo, math.min(cw, cut_to)) end
      redis.call('HSET', KEYS[1], 'cw', fmt(cut), 'ss', fmt(cut), 'ld', fmt(now), 'wm', fmt(cw))
    end
  else
    local limit = math.max(lo, math.floor(cw))
    if num(ARGV[14], 0) == 1 or num(ARGV[4], 0) >= num(ARGV[10], 0.8) * limit then
      -- slow start, then +1 per round trip up to the last loss, then probe slowly beyond it
      if cw < ss then cw = cw + 1
      elseif cw + 1 < wm then cw = cw + 1 / cw
      else cw = cw + 0.125 / cw end
      redis.call('HSET', KEYS[1], 'cw', fmt(math.min(hi, cw)))
    end
  end
end
-- Charge (or give back, delta < 0) a bucket of per_min a minute after the fact: its
-- theoretical arrival time moves, never below now (a bucket holds no more than full).
local function charge(field, delta, per_min)
  if delta == 0 or per_min <= 0 then return end
  local step = 60 / (per_min * num(ARGV[13], 1))
  local tat = math.max(num(redis.call('HGET', KEYS[1], field), 0), now) + delta * step
  redis.call('HSET', KEYS[1], field, fmt(math.max(tat, now)))
end
local delta = num(ARGV[11], 0)
if delta ~= 0 then
  charge('tt', delta, effective(num(ARGV[12], 0), num(redis.call('HGET', KEYS[1], 'lt'), 0)))
end
charge('to', num(ARGV[15], 0), num(ARGV[16], 0))
return removed
"""
)

GATE = (
    _PRELUDE
    + """
-- KEYS[1] lane hash, KEYS[2] the clock; ARGV: wait_s, key_ttl_s, tokens (1: a 429 about
-- tokens: the shared token bucket is empty when the gate opens, ADMIT). Never shortens a
-- longer cooldown.
local now = clock(KEYS[2])
local until_ = now + num(ARGV[1], 0)
if until_ > num(redis.call('HGET', KEYS[1], 'cd'), 0) then
  redis.call('HSET', KEYS[1], 'cd', fmt(until_))
end
if ARGV[3] == '1' and until_ > num(redis.call('HGET', KEYS[1], 'ct'), 0) then
  redis.call('HSET', KEYS[1], 'ct', fmt(until_))
end
redis.call('EXPIRE', KEYS[1], math.floor(num(ARGV[2], 3600)))
return fmt(until_)
"""
)

LEARN = (
    _PRELUDE
    + """
-- KEYS[1] lane hash; ARGV: learned rpm (0: unknown), learned tpm, key_ttl_s
if num(ARGV[1], 0) > 0 then redis.call('HSET', KEYS[1], 'lr', ARGV[1]) end
if num(ARGV[2], 0) > 0 then redis.call('HSET', KEYS[1], 'lt', ARGV[2]) end
redis.call('EXPIRE', KEYS[1], math.floor(num(ARGV[3], 3600)))
return 1
"""
)

LEFT = (
    _PRELUDE
    + """
-- KEYS[1] lane hash; ARGV: the fleet's admissions up to the request answered, its tokens
-- admitted up to it, requests left, tokens left ('': not stated; 'inf': forget the budget:
-- a 429 ended its window, or a request sent with none left was accepted stating none),
-- key_ttl_s. Only the latest statement in admission order counts (an earlier one was made
-- before requests it does not show); a forgotten budget ignores statements about requests
-- admitted before it was forgotten.
local at = num(ARGV[1], 0)
if at < num(redis.call('HGET', KEYS[1], 'bm'), 0) then return 0 end
if ARGV[3] == 'inf' or ARGV[4] == 'inf' then
  local n = num(redis.call('HGET', KEYS[1], 'n'), 0)
  redis.call('HSET', KEYS[1], 'bq', '0', 'tq', '0', 'bm', tostring(n + 1))
else
  redis.call('HSET', KEYS[1], 'bm', tostring(at))
  if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'bq', tostring(at + num(ARGV[3], 0))) end
  if ARGV[4] ~= '' then
    redis.call('HSET', KEYS[1], 'tq', fmt(num(ARGV[2], 0) + num(ARGV[4], 0)))
  end
end
redis.call('EXPIRE', KEYS[1], math.floor(num(ARGV[5], 3600)))
return 1
"""
)

CONTROL = (
    _PRELUDE
    + """
-- KEYS[1] lane hash, KEYS[2] the clock
-- ARGV: rpm, tpm paced at (last writer wins; '': unchanged, 0: none), cap ('': unchanged,
--       0: forget it, n: the lower of n and the stored cap wins, or one more than the stored
--       cap when probing), probing (1/0), floor ('': unchanged; last writer wins), key_ttl_s,
--       provisional (1/0: whether the cap sent is a hypothesis yet; a cap stored keeps the
--       flag of the writer that set it, and a confirmed one equal to it confirms it),
--       loss ('': unchanged, 0: forget it; what a discovered pace climbs back to), measured
--       (1: the loss is a discovery's measure, scaled from the writer's share of the
--       traffic; 0: the fleet's pace when it was refused). Every process refused in the
--       burst that discovers a rate measures it, each from its share (an estimate that
--       runs high): the lowest measure within LOSS_EVENT_S of the first is kept; a later
--       one is a new discovery. A pace refused well under the stored loss (a process cut
--       the pace it adopted for a refusal of a request sent before, in the same burst) is
--       no news; refused a little under it, it is the loss from then on. Past that burst,
--       every cut is measured (below).
--       cut (1: the rpm and loss sent are a cut of the fleet's discovered pace: when the
--       key accepted less than the loss over the whole seconds since the last loss (at
--       least 2, at most MEASURE_S), what it accepted is the loss, and the pace resumes
--       MEASURED_SHARE under it, as a process alone measures its cuts; a process of a
--       fleet sees only its share of what the key took; else the lower of the pace sent
--       and the one stored: a cut never raises the fleet's pace), epoch (the ``pe`` the
--       writer last adopted: every cut and discovery starts a new one, and a rise of the
--       pace from an older one is dropped: it was climbing from a pace cut since, and the
--       last writer overwrote the cut), refused_at (server time: when the 429 a discovery
--       measures was sent; '': not a discovery. What the key took in the second before it,
--       its admissions less the refusals of requests sent then, is the loss, and the pace
--       starts no higher than DISCOVERY_SHARE of it: a process's own measure, divided by its
--       share of the traffic, ran 1.1-2.5 times the server's rate; sent with a cut too:
--       when the key took less than the pace refused, the pace resumes DISCOVERY_SHARE
--       under what it took, at once, rather than cut by a fixed share until two whole
--       seconds of answers measure it)
-- -> {pr, pt, pc, pf, pp, pl, pe} as stored now (false: unset)
local LOSS_EVENT_S = 2.0
local LOSS_NEAR = 0.9
local MEASURE_S = 3
local MEASURED_SHARE = 0.97
local function accepted_rpm(now, since)
  local sec, total = math.floor(now), 0
  local first = math.max(sec - MEASURE_S, math.ceil(since))
  if sec - first < 2 then return nil end
  for s = first, sec - 1 do
    local k = s % 8
    local f = redis.call('HMGET', KEYS[1], 'os' .. k, 'oc' .. k)
    if num(f[1], -1) ~= s then return nil end  -- a second without an answer: too little
    total = total + num(f[2], 0)
  end
  if total < 5 then return nil end
  return 60 * total / (sec - first)
end
local DISCOVERY_SHARE = 0.92
-- What the key took (per minute) in the second before server time t: its admissions then,
-- less the refusals of requests sent then (nil: fewer than 5 admissions, too little). The
-- second ends where t's tenth begins: that tenth holds admissions after t as well (a
-- fleet's next ones, counted with it, read 52 a second where 38 were sent).
local function key_took_rpm(t)
  local last = math.floor(t * 10)
  local admitted, refused = 0, 0
  for s = last - 10, last - 1 do
    local k = s % 80
    local f = redis.call('HMGET', KEYS[1], 'as' .. k, 'ac' .. k, 'rs' .. k, 'rc' .. k)
    if num(f[1], -1) == s then admitted = admitted + num(f[2], 0) end
    if num(f[3], -1) == s then refused = refused + num(f[4], 0) end
  end
  if admitted < 5 or admitted <= refused then return nil end
  return 60 * (admitted - refused)
end
local epoch = num(redis.call('HGET', KEYS[1], 'pe'), 0)
local cut = ARGV[10] == '1'
if ARGV[9] == '1' and (ARGV[12] or '') ~= '' and num(ARGV[1], 0) > 0 then
  local took = key_took_rpm(num(ARGV[12], 0))
  if took ~= nil then
    ARGV[1] = fmt(math.max(6, math.min(num(ARGV[1], 0), DISCOVERY_SHARE * took)))
    ARGV[8] = fmt(took)
  end
end
if ARGV[1] ~= '' and num(ARGV[1], 0) > 0 then
  local stored = num(redis.call('HGET', KEYS[1], 'pr'), 0)
  if cut or ARGV[9] == '1' then
    if cut and stored > 0 then ARGV[1] = fmt(math.min(num(ARGV[1], 0), stored)) end
    redis.call('HSET', KEYS[1], 'pe', tostring(epoch + 1))
  elseif num(ARGV[11], 0) < epoch then
    ARGV[1] = ''  -- a rise from a pace cut since
  end
end
if cut and ARGV[1] ~= '' and (ARGV[8] or '') ~= '' then
  local h = redis.call('HMGET', KEYS[1], 'pl', 'pla')
  local old = num(h[1], 0)
  local taken = nil
  local since = num(h[2], 0)
  local took = nil
  if (ARGV[12] or '') ~= '' then took = key_took_rpm(num(ARGV[12], 0)) end
  if took ~= nil and took < num(ARGV[8], 0) then
    -- What the key took in the second before this 429, counted at once by when requests
    -- were sent: the pace resumes just under it, as a process alone resumes under its own
    -- measure (never above the fleet's stored pace: a cut never raises it).
    local stored = num(redis.call('HGET', KEYS[1], 'pr'), 0)
    local pace = DISCOVERY_SHARE * took
    if stored > 0 then pace = math.min(pace, stored) end
    ARGV[1] = fmt(math.max(6, pace))
    ARGV[8] = fmt(took)
    ARGV[9] = 'measured'
  elseif old > 0 then
    local now = clock(KEYS[2])
    if num(ARGV[8], 0) >= LOSS_NEAR * old or now - since > LOSS_EVENT_S then
      taken = accepted_rpm(now, since)  -- else no news (below)
    end
  end
  if taken ~= nil and taken < num(ARGV[8], 0) then
    ARGV[1] = fmt(math.max(6, math.min(num(ARGV[1], 0), MEASURED_SHARE * taken)))
    ARGV[8] = fmt(taken)
    ARGV[9] = 'measured'
  end
end
local function put(field, v)
  if v == '' then return end
  if num(v, 0) > 0 then redis.call('HSET', KEYS[1], field, v)
  else redis.call('HDEL', KEYS[1], field) end
end
put('pr', ARGV[1])
put('pt', ARGV[2])
if ARGV[3] ~= '' then
  local c = redis.call('HMGET', KEYS[1], 'pc', 'pp', 'cw', 'ss')
  local cap, old = num(ARGV[3], 0), num(c[1], 0)
  -- A cap another process's refused test confirmed (stored without pp) stands against a
  -- hypothesis: neither forgotten because the writer's provisional cap was refuted (its test,
  -- sent at the fleet's count, which runs ahead of the server's, was taken), nor raised by
  -- the writer's test of it (ADMIT would let that test go, past the cap). The writer adopts
  -- it from the reply. (Forgotten, the fleet's limit jumped to its window and drew 20-44
  -- 429s from a cap of 8 where it draws 2-4.)
  local confirmed = old > 0 and c[2] == false and ARGV[7] == '1'
  if cap <= 0 then
    if not confirmed then redis.call('HDEL', KEYS[1], 'pc', 'pp') end
  elseif old <= 0 or cap < old or (ARGV[4] == '1' and cap == old + 1 and not confirmed) then
    redis.call('HSET', KEYS[1], 'pc', tostring(math.floor(cap)))
    if ARGV[7] == '1' then redis.call('HSET', KEYS[1], 'pp', '1')
    else redis.call('HDEL', KEYS[1], 'pp') end
    -- The window comes down to the cap and slow start ends there, as a process's own
    -- window does when it learns a cap (concurrency.py, learn_cap): left where the start
    -- had grown it (26-31 over a cap of 8), a cap forgotten later let the fleet's limit
    -- jump there at once, where one process climbs from the cap.
    if old <= 0 or cap < old then
      local cw, ss = num(c[3], 0), num(c[4], 1e18)
      if cw > cap then redis.call('HSET', KEYS[1], 'cw', fmt(cap)) end
      if ss > cap then redis.call('HSET', KEYS[1], 'ss', fmt(cap)) end
    end
  elseif cap == old and ARGV[7] ~= '1' then
    redis.call('HDEL', KEYS[1], 'pp')
  end
end
put('pf', ARGV[5])
local loss = ARGV[8] or ''
if loss ~= '' then
  local v = num(loss, 0)
  if v <= 0 then redis.call('HDEL', KEYS[1], 'pl', 'pla')
  else
    local now = clock(KEYS[2])
    local h = redis.call('HMGET', KEYS[1], 'pl', 'pla')
    local old = num(h[1], 0)
    if old <= 0 or ARGV[9] == 'measured'
        or (ARGV[9] == '1' and now - num(h[2], -1e18) > LOSS_EVENT_S) then
      redis.call('HSET', KEYS[1], 'pl', loss, 'pla', fmt(now))
    elseif ARGV[9] == '1' then
      if v < old then redis.call('HSET', KEYS[1], 'pl', loss) end
    elseif v >= LOSS_NEAR * old and v < old then
      -- the acceptances since the last loss measure the next cut: not reset by this one
      redis.call('HSET', KEYS[1], 'pl', loss)
    end
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('EXPIRE', KEYS[1], math.floor(num(ARGV[6], 3600)))
end
return redis.call('HMGET', KEYS[1], 'pr', 'pt', 'pc', 'pf', 'pp', 'pl', 'pe')
"""
)

RENEW = (
    _PRELUDE
    + """
-- KEYS[1] slot leases, KEYS[2] the clock; ARGV: lease_ttl_s, lease ids... Only leases still
-- present are renewed (XX): a lease that expired meanwhile was given back and must not come
-- back to life.
local expiry = fmt(clock(KEYS[2]) + num(ARGV[1], 15))
local renewed = 0
for i = 2, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', expiry, ARGV[i])
end
return renewed
"""
)

BUDGET = (
    _PRELUDE
    + """
-- KEYS[1] lane hash; ARGV: delta (deposits x ratio - retries spent), initial, maximum, key_ttl
local balance = num(redis.call('HGET', KEYS[1], 'rb'), num(ARGV[2], 10)) + num(ARGV[1], 0)
balance = math.max(0, math.min(num(ARGV[3], 100), balance))
redis.call('HSET', KEYS[1], 'rb', fmt(balance))
redis.call('EXPIRE', KEYS[1], math.floor(num(ARGV[4], 3600)))
return fmt(balance)
"""
)

HEARTBEAT = (
    _PRELUDE
    + """
-- KEYS[1] live processes (zset: process id -> expiry), KEYS[2] the clock; ARGV: process id,
-- ttl_s
local now = clock(KEYS[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', fmt(now))
redis.call('ZADD', KEYS[1], fmt(now + num(ARGV[2], 5)), ARGV[1])
redis.call('EXPIRE', KEYS[1], math.floor(num(ARGV[2], 5)) + 1)
return redis.call('ZCARD', KEYS[1])
"""
)

_SPEND_PRELUDE = """
local function usd(x) return string.format('%.12f', x) end
-- Holds whose lease ran out (a process that died with requests in flight) give their room back.
local function purge(spend, holds, amounts, now)
  local expired = redis.call('ZRANGEBYSCORE', holds, '-inf', fmt(now))
  if #expired == 0 then return end
  local reserved = num(redis.call('HGET', spend, 'reserved'), 0)
  for _, id in ipairs(expired) do
    reserved = reserved - num(redis.call('HGET', amounts, id), 0)
    redis.call('HDEL', amounts, id)
  end
  redis.call('ZREMRANGEBYSCORE', holds, '-inf', fmt(now))
  if redis.call('ZCARD', holds) == 0 then reserved = 0 end
  redis.call('HSET', spend, 'reserved', usd(math.max(0, reserved)))
end
"""

SPEND_RESERVE = (
    _PRELUDE
    + _SPEND_PRELUDE
    + """
-- KEYS: spend hash (spent, reserved), holds (zset: id -> lease expiry), hold amounts (hash),
-- the clock.
-- ARGV: cap, hold, need, id, lease_s, key_ttl. The spend cap's admission, atomic: a request
-- goes when spent + reserved + its worst case fits; then its expected cost is held.
local now = clock(KEYS[4])
purge(KEYS[1], KEYS[2], KEYS[3], now)
local spent = num(redis.call('HGET', KEYS[1], 'spent'), 0)
local reserved = num(redis.call('HGET', KEYS[1], 'reserved'), 0)
local hold = num(ARGV[2], 0)
local need = math.max(num(ARGV[3], 0), hold)
local granted = 0
if spent + reserved + need <= num(ARGV[1], 0) then
  granted = 1
  reserved = reserved + hold
  redis.call('HSET', KEYS[1], 'reserved', usd(reserved))
  redis.call('ZADD', KEYS[2], fmt(now + num(ARGV[5], 900)), ARGV[4])
  redis.call('HSET', KEYS[3], ARGV[4], usd(hold))
end
local ttl = math.floor(num(ARGV[6], 3600))
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ttl) end
return {granted, usd(spent), usd(reserved), redis.call('ZCARD', KEYS[2])}
"""
)

SPEND_SETTLE = (
    _PRELUDE
    + _SPEND_PRELUDE
    + """
-- KEYS as SPEND_RESERVE; ARGV: id, spent (0 for a release), key_ttl. The hold is dropped (if
-- its lease has not run out) and what the answer cost is counted, whatever became of the hold.
local now = clock(KEYS[4])
purge(KEYS[1], KEYS[2], KEYS[3], now)
local reserved = num(redis.call('HGET', KEYS[1], 'reserved'), 0)
local held = redis.call('HGET', KEYS[3], ARGV[1])
if held then
  reserved = reserved - num(held, 0)
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
if redis.call('ZCARD', KEYS[2]) == 0 then reserved = 0 end
local spent = num(redis.call('HGET', KEYS[1], 'spent'), 0) + num(ARGV[2], 0)
redis.call('HSET', KEYS[1], 'spent', usd(spent), 'reserved', usd(math.max(0, reserved)))
local ttl = math.floor(num(ARGV[3], 3600))
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ttl) end
return {usd(spent), usd(reserved)}
"""
)
