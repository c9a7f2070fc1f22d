"""The GPU-side proxy: the mitmproxy addon and its bridge (:mod:`.bridge`), the local CA
(:mod:`.ca`), ``wonder-run`` (:mod:`.run`) and its network isolation (:mod:`.isolate`)."""
