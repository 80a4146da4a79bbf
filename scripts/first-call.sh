#!/usr/bin/env bash
# Record a first call through a sidecar, with two ffmpeg processes as the PBX's
# RTP senders (G.711 µ-law, payload type 0, 20 ms packets as a PBX sends them),
# then list, export, verify and play it. The export is always $DATA/first.ogg
# (the latest call), so the printed ffplay line works however often this runs. Needs `make run` running
# in another terminal (the server on $SERVER); uses .data/agent.wav and
# .data/customer.wav, which `make run` writes.
set -euo pipefail
cd "$(dirname "$0")/.."
CV=${CV:-.venv/bin/callvault}  # the test suite passes its own
SERVER=${SERVER:-127.0.0.1:7443}
SIDECAR=${SIDECAR:-127.0.0.1:7444}
DATA=${DATA:-.data}
CALL=${CALL:-first-$(date +%s)}

$CV sidecar --server "$SERVER" --rtp "${RTP:-127.0.0.1:40000-40099}" --listen "$SIDECAR" \
  --spool "$DATA/spool" >"$DATA/sidecar.log" 2>&1 &
SIDECAR_PID=$!
trap 'kill $SIDECAR_PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do  # until the sidecar's control API answers
  (exec 3<>"/dev/tcp/${SIDECAR%:*}/${SIDECAR##*:}") 2>/dev/null && break
  sleep 0.1
done

echo "== call start (the sidecar allocates one UDP port per leg)"
PORTS=$($CV call start --sidecar "$SIDECAR" --call-id "$CALL" --meta agent=alex \
  --meta direction=inbound --meta tags=first)
echo "$PORTS"
port() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$PORTS" "$1"; }

echo "== two ffmpeg RTP senders, 20 s of G.711 each (real time, 20 ms packets)"
# asetnsamples=160: 20 ms frames; -pkt_size 172: 12 header bytes + 160 samples per packet
RTP_OUT=(-af asetnsamples=160 -c:a pcm_mulaw -payload_type 0 -pkt_size 172 -f rtp)
ffmpeg -hide_banner -loglevel error -re -i "$DATA/agent.wav" "${RTP_OUT[@]}" \
  "rtp://127.0.0.1:$(port agent)" >/dev/null &
A=$!
ffmpeg -hide_banner -loglevel error -re -i "$DATA/customer.wav" "${RTP_OUT[@]}" \
  "rtp://127.0.0.1:$(port customer)" >/dev/null &
C=$!
wait $A $C

echo "== call stop (the sidecar seals the call on the server)"
$CV call stop --sidecar "$SIDECAR" --call-id "$CALL"

echo "== ls"
$CV --server "$SERVER" ls
echo "== export"
$CV --server "$SERVER" export "$CALL" -o "$DATA/first.ogg"
ffprobe -v error -show_entries stream=channels:format=duration -of compact "$DATA/first.ogg"
echo "== verify"
$CV --server "$SERVER" verify "$CALL"
echo "== play:  ffplay -nodisp -autoexit $DATA/first.ogg"
