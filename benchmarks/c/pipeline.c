/* The plain C peer of the offline workloads (benchmarks/bench_transcode.py):
 * a whole call's capture to Opus packets, the same stages as `callvault
 * transcode` / `callvault import`, written the plain way.
 *
 *   1. Read the capture: the whole classic pcap file into memory (usec or nsec
 *      timestamps, either byte order; link types Ethernet with 802.1Q/ad tags,
 *      Linux cooked v1, raw IP), IPv4/IPv6 + UDP headers, non-first IP
 *      fragments skipped, RTP v2 check (not RTCP).
 *   2. Flows: one UDP 5-tuple direction is one flow (a small table, linear
 *      lookup); a flow of fewer than 3 RTP packets is no leg; legs are ordered
 *      by their first packet.
 *   3. A simple de-jitter per leg: sequence numbers and timestamps extended to
 *      64 bits per SSRC run, packets sorted by (SSRC run, sequence), duplicates
 *      dropped; each SSRC run anchored on the call timeline by the arrival
 *      time of its first packet (its span ends there), later packets placed
 *      by RTP timestamp; a packet placed before what is already written is
 *      late and dropped. Lost frames stay silent (no concealment).
 *   4. G.711 decode (PCMU 0 / PCMA 8, by table) onto the timeline; comfort
 *      noise (13) and RFC 4733 events (dynamic types) are skipped.
 *   5. Per 20 ms frame: an energy VAD like _dsp.Vad (frame level in dBFS,
 *      minimum-statistics floor over 1 s, hangover 200 ms, floor -55 dBFS),
 *      threshold `vad_threshold_db`; voice frames at `bitrate`, the others at
 *      `silence_bitrate` (OPUS_SET_BITRATE when the class changes).
 *   6. libopus: one encoder per leg, 8 kHz mono VoIP, with the requests and
 *      settings ext/_opus.pyx's Encoder makes (complexity, DTX, VBR, no FEC,
 *      signal voice), one packet per frame, both legs padded with silence to
 *      the longer one, plus one silent flush frame per leg, like the product.
 *
 * Output: the packets of each leg are written back to back into one reused
 * buffer (nothing kept, no container), as a raw packet stream would be.
 * It does less than the product: no Ogg, no DTMF detector, no levels, no
 * loss concealment, no DTX packet replacement, no hostile-input bounds.
 *
 * Built by benchmarks/bench_transcode.py:
 *   gcc -O2 -shared -fPIC pipeline.c $(pkg-config --cflags --libs opus) -lm
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <opus.h>

#define FRAME 160           /* samples per 20 ms frame at 8 kHz */
#define RATE 8000
#define MAX_FLOWS 64
#define MIN_RTP_PACKETS 3
#define MAX_PACKET 4000
#define VAD_WINDOW 50       /* 1 s of frame levels */
#define VAD_HANG 10         /* 200 ms */
#define VAD_MIN_LEVEL -55.0

/* What one call produced; filled for the caller's checks. */
typedef struct {
    int64_t legs;
    int64_t frames;         /* per leg (both legs have as many) */
    int64_t rtp_packets;    /* RTP packets in the legs */
    int64_t placed;         /* audio packets decoded onto a timeline */
    int64_t opus_packets;
    int64_t opus_bytes;
    int64_t voice_frames;
    int64_t dtx_packets;    /* packets of at most 2 bytes (TOC-only DTX) */
} cv_pipeline_stats;

typedef struct {
    const uint8_t *data;    /* the RTP packet inside the file buffer */
    int32_t len;
    int64_t arrival_us;
    int64_t run;            /* SSRC run within the flow */
    int64_t ext_seq;
    int64_t ext_ts;
} pkt;

typedef struct {
    uint8_t key[37];        /* ip version, src, dst (16 bytes each), ports in the last 4 */
    pkt *pkts;
    int64_t n, cap;
} flow;

static int16_t ulaw_table[256], alaw_table[256];

static void g711_tables(void)
{
    for (int i = 0; i < 256; i++) {
        int u = ~i & 0xFF;
        int t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4);
        ulaw_table[i] = (int16_t)((u & 0x80) ? (0x84 - t) : (t - 0x84));
        int a = i ^ 0x55;
        int seg = (a & 0x70) >> 4;
        int v = (a & 0x0F) << 4;
        v = seg == 0 ? v + 8 : seg == 1 ? v + 0x108 : (v + 0x108) << (seg - 1);
        alaw_table[i] = (int16_t)((a & 0x80) ? v : -v);
    }
}

static uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static uint32_t rd32(const uint8_t *p, int swap)
{
    return swap ? be32(p) : ((uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0]);
}

static int add_packet(flow *flows, int *nflows, const uint8_t *key, const uint8_t *rtp,
                      int32_t len, int64_t arrival_us)
{
    int f;
    for (f = 0; f < *nflows; f++)
        if (memcmp(flows[f].key, key, sizeof flows[f].key) == 0)
            break;
    if (f == *nflows) {
        if (*nflows == MAX_FLOWS)
            return 0; /* more flows than a call has: ignored */
        memcpy(flows[f].key, key, sizeof flows[f].key);
        flows[f].pkts = NULL;
        flows[f].n = flows[f].cap = 0;
        (*nflows)++;
    }
    flow *fl = &flows[f];
    if (fl->n == fl->cap) {
        int64_t cap = fl->cap ? fl->cap * 2 : 1024;
        pkt *grown = realloc(fl->pkts, (size_t)cap * sizeof(pkt));
        if (grown == NULL)
            return -1;
        fl->pkts = grown;
        fl->cap = cap;
    }
    pkt *p = &fl->pkts[fl->n++];
    p->data = rtp;
    p->len = len;
    p->arrival_us = arrival_us;
    return 0;
}

/* Link, IP and UDP headers of one frame; adds an RTP-looking payload to its flow. */
static int parse_frame(uint32_t linktype, const uint8_t *f, int64_t caplen, int64_t ts_us,
                       flow *flows, int *nflows)
{
    const uint8_t *ip;
    int64_t left;
    int ver;
    if (linktype == 1) { /* Ethernet */
        if (caplen < 14)
            return 0;
        int64_t off = 14;
        uint16_t et = be16(f + 12);
        while ((et == 0x8100 || et == 0x88A8 || et == 0x9100) && caplen >= off + 4) {
            et = be16(f + off + 2);
            off += 4;
        }
        if (et != 0x0800 && et != 0x86DD)
            return 0;
        ip = f + off;
        left = caplen - off;
    } else if (linktype == 113) { /* Linux cooked v1 */
        if (caplen < 16)
            return 0;
        ip = f + 16;
        left = caplen - 16;
    } else if (linktype == 101 || linktype == 228 || linktype == 229) { /* raw IP */
        ip = f;
        left = caplen;
    } else {
        return -2; /* unsupported link type */
    }
    if (left < 1)
        return 0;
    uint8_t key[37];
    memset(key, 0, sizeof key);
    const uint8_t *udp;
    int64_t ulen_avail;
    ver = ip[0] >> 4;
    if (ver == 4) {
        if (left < 20)
            return 0;
        int ihl = (ip[0] & 0x0F) * 4;
        int64_t total = be16(ip + 2);
        if (ip[9] != 17 || (be16(ip + 6) & 0x3FFF))
            return 0;
        if (total > left)
            total = left;
        if (ihl < 20 || total < ihl + 8)
            return 0;
        key[0] = 4;
        memcpy(key + 1, ip + 12, 4);
        memcpy(key + 17, ip + 16, 4);
        udp = ip + ihl;
        ulen_avail = total - ihl;
    } else if (ver == 6) {
        if (left < 48 || ip[6] != 17)
            return 0;
        key[0] = 6;
        memcpy(key + 1, ip + 8, 32);
        udp = ip + 40;
        ulen_avail = left - 40;
    } else {
        return 0;
    }
    uint16_t ulen = be16(udp + 4);
    if (ulen < 8 || ulen > ulen_avail)
        return 0;
    memcpy(key + 33, udp, 4); /* source and destination ports */
    const uint8_t *rtp = udp + 8;
    int32_t n = ulen - 8;
    if (n < 12 || rtp[0] >> 6 != 2 || (rtp[1] >= 192 && rtp[1] <= 223))
        return 0;
    return add_packet(flows, nflows, key, rtp, n, ts_us);
}

static int by_run_seq(const void *a, const void *b)
{
    const pkt *x = a, *y = b;
    if (x->run != y->run)
        return x->run < y->run ? -1 : 1;
    if (x->ext_seq != y->ext_seq)
        return x->ext_seq < y->ext_seq ? -1 : 1;
    return x->arrival_us < y->arrival_us ? -1 : x->arrival_us > y->arrival_us;
}

/* The RTP payload of a packet (after CSRCs and extension, before padding). */
static int payload(const pkt *p, const uint8_t **out)
{
    const uint8_t *d = p->data;
    int32_t size = 12 + 4 * (d[0] & 0x0F);
    if (d[0] & 0x10) {
        if (p->len < size + 4)
            return -1;
        size += 4 + 4 * be16(d + size + 2);
    }
    int32_t end = p->len;
    if (d[0] & 0x20)
        end -= d[p->len - 1];
    if (end < size)
        return -1;
    *out = d + size;
    return end - size;
}

/* De-jitter one flow and decode it onto `pcm` (the call timeline, `cap` samples,
 * zeroed); returns the samples written up to (the leg's end), or -1. */
static int64_t place_leg(flow *fl, int64_t start_us, int16_t **pcm, int64_t *cap,
                         cv_pipeline_stats *st)
{
    /* extend sequence numbers and timestamps per SSRC run, in arrival order */
    int64_t run = -1, hi_seq = 0, hi_ts = 0;
    uint32_t ssrc = 0;
    for (int64_t i = 0; i < fl->n; i++) {
        pkt *p = &fl->pkts[i];
        uint32_t s = be32(p->data + 8);
        uint16_t seq = be16(p->data + 2);
        uint32_t ts = be32(p->data + 4);
        if (run < 0 || s != ssrc) {
            run++;
            ssrc = s;
            hi_seq = seq;
            hi_ts = ts;
        }
        p->run = run;
        p->ext_seq = hi_seq + (int16_t)(uint16_t)(seq - (uint16_t)hi_seq);
        p->ext_ts = hi_ts + (int32_t)(ts - (uint32_t)hi_ts);
        if (p->ext_seq > hi_seq) {
            hi_seq = p->ext_seq;
            hi_ts = p->ext_ts;
        }
    }
    qsort(fl->pkts, (size_t)fl->n, sizeof(pkt), by_run_seq);
    int64_t written = 0, offset = 0, cur_run = -1, last_seq = 0;
    for (int64_t i = 0; i < fl->n; i++) {
        pkt *p = &fl->pkts[i];
        int pt = p->data[1] & 0x7F;
        if (pt != 0 && pt != 8)
            continue; /* comfort noise, events, other codecs */
        const uint8_t *pl;
        int len = payload(p, &pl);
        if (len <= 0)
            continue;
        if (p->run != cur_run) { /* anchor: the span ends at the arrival position */
            int64_t a = (p->arrival_us - start_us) * RATE / 1000000;
            int64_t pos = a - len;
            if (pos < written)
                pos = written;
            offset = pos - p->ext_ts;
            cur_run = p->run;
        } else if (p->ext_seq == last_seq) {
            continue; /* duplicate */
        }
        last_seq = p->ext_seq;
        int64_t pos = p->ext_ts + offset;
        if (pos < written || pos < 0)
            continue; /* late */
        if (pos + len > *cap) {
            int64_t n = (pos + len) * 2;
            int16_t *grown = realloc(*pcm, (size_t)n * sizeof(int16_t));
            if (grown == NULL)
                return -1;
            memset(grown + *cap, 0, (size_t)(n - *cap) * sizeof(int16_t));
            *pcm = grown;
            *cap = n;
        }
        const int16_t *table = pt == 0 ? ulaw_table : alaw_table;
        int16_t *out = *pcm + pos;
        for (int k = 0; k < len; k++)
            out[k] = table[pl[k]];
        written = pos + len;
        st->placed++;
    }
    return written;
}

typedef struct {
    double ring[VAD_WINDOW];
    int len, pos, hang;
} vad;

static int vad_frame(vad *v, const int16_t *x, double threshold)
{
    int64_t acc = 0;
    for (int j = 0; j < FRAME; j++)
        acc += (int64_t)x[j] * x[j];
    double level = acc > 0 ? 10.0 * log10((double)acc / (FRAME * 32768.0 * 32768.0)) : -INFINITY;
    v->ring[v->pos] = level;
    v->pos = (v->pos + 1) % VAD_WINDOW;
    if (v->len < VAD_WINDOW)
        v->len++;
    double floor = INFINITY;
    for (int k = 0; k < v->len; k++)
        if (v->ring[k] < floor)
            floor = v->ring[k];
    if (level > VAD_MIN_LEVEL && level > floor + threshold) {
        v->hang = VAD_HANG;
        return 1;
    }
    if (v->hang > 0) {
        v->hang--;
        return 1;
    }
    return 0;
}

static int encode_leg(const int16_t *pcm, int64_t frames, int bitrate, int silence_bitrate,
                      double vad_threshold_db, int complexity, int dtx, int vbr,
                      unsigned char *out, cv_pipeline_stats *st)
{
    int err = OPUS_OK;
    OpusEncoder *enc = opus_encoder_create(RATE, 1, OPUS_APPLICATION_VOIP, &err);
    if (err != OPUS_OK || enc == NULL)
        return err != OPUS_OK ? err : OPUS_ALLOC_FAIL;
    if ((err = opus_encoder_ctl(enc, OPUS_SET_BITRATE(bitrate))) != OPUS_OK ||
        (err = opus_encoder_ctl(enc, OPUS_SET_COMPLEXITY(complexity))) != OPUS_OK ||
        (err = opus_encoder_ctl(enc, OPUS_SET_DTX(dtx))) != OPUS_OK ||
        (err = opus_encoder_ctl(enc, OPUS_SET_VBR(vbr))) != OPUS_OK ||
        (err = opus_encoder_ctl(enc, OPUS_SET_INBAND_FEC(0))) != OPUS_OK ||
        (err = opus_encoder_ctl(enc, OPUS_SET_PACKET_LOSS_PERC(0))) != OPUS_OK ||
        (err = opus_encoder_ctl(enc, OPUS_SET_SIGNAL(OPUS_SIGNAL_VOICE))) != OPUS_OK) {
        opus_encoder_destroy(enc);
        return err;
    }
    static const int16_t silence[FRAME];
    vad v = {{0}, 0, 0, 0};
    int rate = bitrate;
    int64_t used = 0;
    for (int64_t i = 0; i <= frames; i++) {
        const int16_t *x = i < frames ? pcm + i * FRAME : silence; /* last: the flush frame */
        if (i < frames) {
            int voice = vad_frame(&v, x, vad_threshold_db);
            st->voice_frames += voice;
            int want = voice || silence_bitrate <= 0 ? bitrate : silence_bitrate;
            if (want != rate) {
                if ((err = opus_encoder_ctl(enc, OPUS_SET_BITRATE(want))) != OPUS_OK)
                    break;
                rate = want;
            }
        }
        if (used > (1 << 20) - MAX_PACKET)
            used = 0; /* the raw stream goes nowhere: reuse the buffer */
        int n = opus_encode(enc, x, FRAME, out + used, MAX_PACKET);
        if (n < 0) {
            err = n;
            break;
        }
        used += n;
        st->opus_packets++;
        st->opus_bytes += n;
        st->dtx_packets += n <= 2;
    }
    opus_encoder_destroy(enc);
    return err < 0 ? err : 0;
}

/* The whole call: returns 0, -1 (cannot read the file or out of memory), -2 (not a
 * classic pcap, or an unsupported link type), -3 (no RTP leg) or a libopus error. */
int cv_bench_pipeline(const char *path, int bitrate, int silence_bitrate,
                      double vad_threshold_db, int complexity, int dtx, int vbr,
                      cv_pipeline_stats *st)
{
    static int tables;
    if (!tables) {
        g711_tables();
        tables = 1;
    }
    memset(st, 0, sizeof *st);
    FILE *fp = fopen(path, "rb");
    if (fp == NULL)
        return -1;
    fseek(fp, 0, SEEK_END);
    long size = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *buf = malloc(size > 0 ? (size_t)size : 1);
    if (buf == NULL || fread(buf, 1, (size_t)size, fp) != (size_t)size) {
        fclose(fp);
        free(buf);
        return -1;
    }
    fclose(fp);

    int rc = 0, nflows = 0;
    flow flows[MAX_FLOWS];
    int16_t *pcm[2] = {NULL, NULL};
    unsigned char *out = NULL;
    if (size < 24) {
        rc = -2;
        goto done;
    }
    uint32_t magic = rd32(buf, 0);
    int swap, nsec;
    if (magic == 0xA1B2C3D4 || magic == 0xA1B23C4D) {
        swap = 0;
        nsec = magic == 0xA1B23C4D;
    } else if (magic == 0xD4C3B2A1 || magic == 0x4D3CB2A1) {
        swap = 1;
        nsec = magic == 0x4D3CB2A1;
    } else {
        rc = -2;
        goto done;
    }
    uint32_t linktype = rd32(buf + 20, swap) & 0x0FFFFFFF;
    for (int64_t off = 24; off + 16 <= size;) {
        const uint8_t *h = buf + off;
        int64_t sec = rd32(h, swap), frac = rd32(h + 4, swap), caplen = rd32(h + 8, swap);
        if (off + 16 + caplen > size)
            break; /* cut short: keep what came before */
        int64_t ts_us = sec * 1000000 + (nsec ? (frac + 500) / 1000 : frac);
        rc = parse_frame(linktype, h + 16, caplen, ts_us, flows, &nflows);
        if (rc < 0)
            goto done;
        off += 16 + caplen;
    }
    /* legs: flows with enough RTP, by first packet (at most two, agent and customer) */
    int legs[2], nlegs = 0;
    for (int pass = 0; pass < 2; pass++) {
        int best = -1;
        for (int f = 0; f < nflows; f++) {
            if (flows[f].n < MIN_RTP_PACKETS || (nlegs && legs[0] == f))
                continue;
            if (best < 0 || flows[f].pkts[0].arrival_us < flows[best].pkts[0].arrival_us)
                best = f;
        }
        if (best >= 0)
            legs[nlegs++] = best;
    }
    if (nlegs == 0) {
        rc = -3;
        goto done;
    }
    int64_t start_us = flows[legs[0]].pkts[0].arrival_us;
    int64_t frames = 0, cap[2] = {0, 0};
    for (int l = 0; l < nlegs; l++) {
        st->rtp_packets += flows[legs[l]].n;
        int64_t written = place_leg(&flows[legs[l]], start_us, &pcm[l], &cap[l], st);
        if (written < 0) {
            rc = -1;
            goto done;
        }
        int64_t f = (written + FRAME - 1) / FRAME;
        if (f > frames)
            frames = f;
    }
    for (int l = 0; l < nlegs; l++) { /* pad every leg with silence to the longest */
        if (cap[l] < frames * FRAME) {
            int16_t *grown = realloc(pcm[l], (size_t)(frames * FRAME) * sizeof(int16_t));
            if (grown == NULL) {
                rc = -1;
                goto done;
            }
            memset(grown + cap[l], 0, (size_t)(frames * FRAME - cap[l]) * sizeof(int16_t));
            pcm[l] = grown;
            cap[l] = frames * FRAME;
        }
    }
    out = malloc(1 << 20);
    if (out == NULL) {
        rc = -1;
        goto done;
    }
    for (int l = 0; l < nlegs; l++) {
        rc = encode_leg(pcm[l], frames, bitrate, silence_bitrate, vad_threshold_db, complexity,
                        dtx, vbr, out, st);
        if (rc < 0)
            goto done;
    }
    st->legs = nlegs;
    st->frames = frames;
done:
    for (int f = 0; f < nflows; f++)
        free(flows[f].pkts);
    free(pcm[0]);
    free(pcm[1]);
    free(out);
    free(buf);
    return rc;
}

/* The G.711 tables the pipeline decodes with, for the benchmark's check against
 * callvault._g711 (256 entries each). */
void cv_bench_g711_tables(int16_t *ulaw, int16_t *alaw)
{
    g711_tables();
    memcpy(ulaw, ulaw_table, sizeof ulaw_table);
    memcpy(alaw, alaw_table, sizeof alaw_table);
}
