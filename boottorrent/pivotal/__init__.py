"""The pivotal's program: python3 -m boottorrent.pivotal.

Runs as the pivotal's main program (pivotal/init starts it):

 1. network.py brings up the interface that booted (BOOTIF=, else the first
    with a link) and gets an address with busybox udhcpc, unless it has one;
 2. swarm.py picks the image (boottorrent.image= on the kernel command line,
    set by the iPXE script from the MAC mapping or the menu, else the MAC
    mapping, else the default), downloads its files into RAM with
    libtorrent from the server (a known peer) and from every other machine
    the tracker names, falls back to the server's HTTP web seed if the swarm
    makes no progress, then keeps seeding until the tracker has reported no
    incomplete peer for seed_idle_time seconds (or seed_time_max);
 3. kexec.py checks the files and kexecs into the image (kexec_file_load
    first: it survives Secure Boot lockdown).

report.py tells the server's /report the phase and progress every second,
which `boottorrent status` shows. With --dry-run it does everything but the
kexec, and prints the kexec commands instead.

This package is exactly what the pivotal ships of boottorrent (the builder,
boottorrent.initramfs.python, refuses any other of our modules); the server
imports its lan settings from here.
"""


class ClientError(Exception):
    """A failure the console message explains; the program retries it."""
