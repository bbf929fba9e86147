"""`make bench` (python3 -m bench): BootTorrent against central HTTP and
udpcast multicast, and against the Kumar-Ross lower bound, for 1 to 32
clients on a lab LAN where every link is shaped to the same rate.

Writes bench/results.csv, bench/RESULTS.md and bench/scaling.png.
"""
