"""`make demo`: a BootTorrent server and a few QEMU machines on one host."""
