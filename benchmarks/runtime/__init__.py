"""`make bench-runtime`: the prefix-cache figure (hit rate and TTFT by KV format and budget) on the CPU runtime."""
