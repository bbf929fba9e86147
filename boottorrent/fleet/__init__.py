"""The fleet: what the server knows of the machines it booted, and the boot
storm's rules (README, "The boot storm", draws them).

* policy.py: the tuning numbers, named once (a few are [seeder] keys);
* state.py: a machine's state and its fetch of the pivotal's parts, typed;
* rules.py: the decisions, pure functions of that state and the time;
* machines.py: the state kept, under one lock and one clock (Fleet);
* chain.py: who streams an image's bytes to whom.

The seeder's HTTP side (web.py) routes requests here and holds no rule.
"""

from boottorrent.fleet.machines import Fleet
from boottorrent.fleet.policy import Policy
from boottorrent.fleet.state import Answer, Via

__all__ = ["Answer", "Fleet", "Policy", "Via"]
