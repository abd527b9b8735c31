"""netstack: the sans-IO core of slirpnet.

Frames from the guest, events from the host side and the current time go in;
frames for the guest, actions for the edge and the next deadline come out.
Nothing in this package opens a file descriptor, sleeps, or reads a clock, and
nothing here imports ``slirp`` (the edge).
"""
