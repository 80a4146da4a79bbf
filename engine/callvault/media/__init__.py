"""Media: what turns packets and files into frames and files.

Captures (pcap/pcapng) and the wire's RTP batches, WAV and Ogg Opus files,
the per-leg pipeline over the compiled hot path (jitter buffer, G.711, DSP,
Opus), sample calls, and the pure-Python twins of ext/ (``jitter_ref``,
``g711_ref``) that differential tests compare against. Imports only the
compiled extensions (``callvault._*``) and the package's base modules
(errors, durable, timeline); never the vault, the server, the sidecar or the CLI.
"""
