"""`llava-edge tune`: measure the settings that change latency on this machine, keep the best (see :mod:`.profile`)."""
