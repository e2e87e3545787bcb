"""Times kernel_table.dump() over the TIME_WAIT sockets of all namespaces."""
import os, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", ".."))
from tracer.sources import kernel_table as kt
from tracer.core.states import TcpState

kt.dump([TcpState.TIME_WAIT], netns={})  # imports pyroute2 once, outside the timing
ns = kt.namespaces()
print("namespaces:", ns)
for _ in range(5):
    t = time.perf_counter()
    socks, problems = kt.dump([TcpState.TIME_WAIT])
    d = time.perf_counter() - t
    print(f"dump(TIME_WAIT): {len(socks)} sockets in {d*1000:.0f} ms ({d/len(socks)*1e6 if socks else 0:.2f} us each) problems={problems}")
t = time.perf_counter(); tw = kt.timewait_connections(); d = time.perf_counter() - t
print(f"timewait_connections(): {len(tw)} in {d*1000:.0f} ms")
t = time.perf_counter(); socks, problems = kt.dump([TcpState.ESTABLISHED, TcpState.LISTEN]); d = time.perf_counter() - t
print(f"dump(ESTABLISHED, LISTEN) with the TIME_WAITs present: {len(socks)} in {d*1000:.1f} ms")
