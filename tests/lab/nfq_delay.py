#!/usr/bin/env python
"""User-space stand-in for `tc qdisc ... netem delay` (kernels without sch_netem).

Run inside the lab's network namespace; it holds every packet of NFQUEUE 0 for DELAY_MS, first in first
out, then lets it go. lab.sh routes the namespace's loopback traffic to it with
    iptables -A OUTPUT -o lo -j NFQUEUE --queue-num 0 --queue-bypass
On 'lo' each packet crosses OUTPUT once, so DELAY_MS=25 gives a 50 ms round trip.

usage: python nfq_delay.py DELAY_MS
"""
import collections
import select
import signal
import sys
import time

from netfilterqueue import COPY_META, NetfilterQueue


def main():
    delay = float(sys.argv[1]) / 1000.0
    queue = collections.deque()

    def held(pkt):
        queue.append((time.monotonic() + delay, pkt))

    nfq = NetfilterQueue()
    nfq.bind(0, held, max_len=65536, mode=COPY_META)
    fd = nfq.get_fd()
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    released = 0
    print(f"delaying packets by {delay * 1000:.1f} ms", flush=True)
    try:
        while True:
            timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else 1.0
            ready, _, _ = select.select([fd], [], [], timeout)
            if ready:
                nfq.run(block=False)
            now = time.monotonic()
            while queue and queue[0][0] <= now:
                queue.popleft()[1].accept()
                released += 1
    finally:
        for _, pkt in queue:
            pkt.accept()
        nfq.unbind()
        print("packets delayed:", released, flush=True)


if __name__ == "__main__":
    main()
