"""Media: what turns packets and files into frames and files.

Captures (pcap/pcapng, ``capture``), the wire's RTP batches (``batch``: LegBatch
and the call-start bound), runs of packets (``packets.PacketRun``), WAV and Ogg
Opus files (``wav``, ``ogg``: the one dual-track writer and the one DTX
replacer), RTP packet building (``rtppack``) and WAV legs as plain real-time
RTP (``packetize``), the per-leg pipeline over the compiled hot path (jitter
buffer, G.711, DSP, Opus), sample calls with simulated network trouble
(``sample``, for `callvault sample`, tests and benchmarks), and the
pure-Python twins of ext/ (``jitter_ref``, ``g711_ref``) that differential
tests compare against. Imports only the compiled extensions (``callvault._*``)
and the package's base modules (errors, durable, timeline, rtpdefs); never the
vault, the server, the sidecar or the CLI.
"""
