"""Side-by-side benchmarks: slirpnet against slirp4netns, pasta and the kernel.

``python -m benchmarks`` (or ``benchmarks/run``, which also drops from root to
the test user) measures every row in one run on one machine and writes raw
JSON, a Markdown table block and a PNG under ``benchmarks/results/``.

Modules: ``procs`` (processes and namespaces, ended by PID), ``rows`` (what
carries the traffic and how it is started), ``metrics`` (iperf3 and the
``tcpbench.c`` timing tool), ``report`` (medians and tables, pure), ``plot``.
"""
