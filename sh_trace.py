import sys
sys.path.insert(0, "."); 
exec(open('/work/notes/s35/sh.py').read().split("rng = random.Random")[0])
from tests.core.test_controller_property import _QueueingServer
def trace(capacity, slowdown, service_s, seed, run_s=30.0):
    clock = SimClock()
    lane = Lane(("/v1/chat/completions", "m"), limits=Limits(), retry=RetryPolicy(), clock=clock)
    lane.queue.join(_ThreadWaiter())
    server = _QueueingServer(capacity, slowdown, service_s, seed)
    ok = classify_response(200, {}, None, now_wall_s=0.0)
    last = -1; done = 0; cuts = 0
    while clock.now < run_s:
        now = clock.now
        for permit in server.done(now):
            lane.settle(permit, ok, now=now, max_hint_s=600.0, retry=False); done += 1
        while lane._try_admit(now, 0) == 0.0:
            server.arrive(lane._grant(now, 0, now), now)
        if int(now*2) != last:
            last = int(now*2)
            s = lane.slots; lat = lane.latency
            print(f"t={now:5.1f} inflight={s.in_flight:3d} win={s.window:6.2f} lim={s.limit:3d} ss={s._ssthresh:6.1f} loss={s._loss_window:6.1f} base={lat.base_s:.2f} srv_q={len(server.waiting):3d} done={done} dec={s.decreases}")
        clock.now = round(now + _STEP_S, 6)
trace(*[float(x) if '.' in x else int(x) for x in sys.argv[1:5]])
