"""Self-hosted (queueing) server on the simulated clock: served per s over capacity's ideal."""
import random, statistics, sys
sys.path.insert(0, "tests/core"); sys.path.insert(0, ".")
from tests.core.test_controller_property import _QueueingServer, _ThreadWaiter, _STEP_S, SimClock
from pacekeeper.core.lane import Lane
from pacekeeper import Limits, RetryPolicy
from pacekeeper.core.classify import classify_response

def run(capacity, slowdown, service_s, seed, run_s=None):
    clock = SimClock()
    lane = Lane(("/v1/chat/completions", "m"), limits=Limits(), retry=RetryPolicy(), clock=clock)
    lane.queue.join(_ThreadWaiter())
    server = _QueueingServer(capacity, slowdown, service_s, seed)
    ok = classify_response(200, {}, None, now_wall_s=0.0)
    t_meas = T_MEAS * service_s if run_s is None else 0.0
    run_s = run_s or 10.0 + 12.0 * service_s
    done = 0; peak = 0; inf = []
    while clock.now < run_s:
        now = clock.now
        for permit in server.done(now):
            lane.settle(permit, ok, now=now, max_hint_s=600.0, retry=False)
            if now >= t_meas: done += 1
        while lane._try_admit(now, 0) == 0.0:
            server.arrive(lane._grant(now, 0, now), now)
        peak = max(peak, lane.slots.in_flight)
        if now >= t_meas: inf.append(lane.slots.in_flight)
        clock.now = round(now + _STEP_S, 6)
    ideal = ref(capacity, slowdown, service_s, seed, run_s, t_meas)
    return done / ideal, statistics.mean(inf) / capacity, peak / capacity

T_MEAS = float(sys.argv[3]) if len(sys.argv) > 3 else 3.0
def ref(capacity, slowdown, service_s, seed, run_s, t_meas):
    server = _QueueingServer(capacity, slowdown, service_s, seed)
    now = 0.0; n = 0; done = 0
    while now < run_s:
        for _ in server.done(now):
            n -= 1
            if now >= t_meas: done += 1
        while n < capacity:
            server.arrive(object(), now); n += 1
        now = round(now + _STEP_S, 6)
    return done

rng = random.Random(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
effs = []
for i in range(int(sys.argv[2]) if len(sys.argv) > 2 else 24):
    c = rng.randint(8, 24); s = rng.uniform(0.1, 0.4); lat = rng.uniform(0.3, 2.0); seed = rng.randint(0, 1000)
    e, m, p = run(c, s, lat, seed)
    effs.append(e)
    print(f"c={c:2d} slow={s:.4f} lat={lat:.4f} seed={seed} eff={e:.3f} mean_inflight/c={m:.2f} peak/c={p:.2f}")
effs.sort()
print("worst %.3f p25 %.3f median %.3f" % (effs[0], effs[len(effs)//4], statistics.median(effs)))
