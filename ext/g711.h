/* ITU-T G.711 mu-law and A-law companding, one sample at a time.
 *
 * Decoders are bit-exact with the ITU-T G.711 tables (and therefore with
 * ffmpeg's pcm_mulaw / pcm_alaw decoders, checked in tests/test_g711.py).
 * Encoders follow the same segment tables: mu-law with the 0x84 bias and
 * clipping at 32635, A-law on the 13-bit magnitude with even-bit inversion
 * (0x55). Used by ext/_g711.pyx (batch API) and ext/_rtp.pyx (jitter buffer).
 */
#ifndef CALLVAULT_G711_H
#define CALLVAULT_G711_H

#include <stdint.h>

#define CV_ULAW_BIAS 0x84   /* 132: makes segment boundaries powers of two */
#define CV_ULAW_CLIP 32635  /* largest magnitude that fits after the bias */

static inline int cv_top_bit(unsigned v) { return 31 - __builtin_clz(v); }

static inline int16_t cv_ulaw_decode(uint8_t u) {
    int t;
    u = (uint8_t)~u;
    t = ((u & 0x0F) << 3) + CV_ULAW_BIAS;
    t <<= (u & 0x70) >> 4;
    return (int16_t)((u & 0x80) ? (CV_ULAW_BIAS - t) : (t - CV_ULAW_BIAS));
}

static inline int16_t cv_alaw_decode(uint8_t a) {
    int t, seg;
    a ^= 0x55;
    t = (a & 0x0F) << 4;
    seg = (a & 0x70) >> 4;
    if (seg == 0) {
        t += 8;
    } else {
        t += 0x108;
        if (seg > 1) t <<= seg - 1;
    }
    return (int16_t)((a & 0x80) ? t : -t);
}

static inline uint8_t cv_ulaw_encode(int16_t pcm) {
    int x = pcm, mask, seg;
    if (x < 0) { x = -x; mask = 0x7F; } else { mask = 0xFF; }
    if (x > CV_ULAW_CLIP) x = CV_ULAW_CLIP;
    x += CV_ULAW_BIAS;
    seg = cv_top_bit((unsigned)x) - 7;          /* 0..7 */
    return (uint8_t)(((seg << 4) | ((x >> (seg + 3)) & 0x0F)) ^ mask);
}

static inline uint8_t cv_alaw_encode(int16_t pcm) {
    int x = pcm >> 3, mask, seg;                 /* 13-bit magnitude */
    if (x >= 0) { mask = 0xD5; } else { mask = 0x55; x = -x - 1; }
    seg = (x < 0x20) ? 0 : cv_top_bit((unsigned)x) - 4;  /* 0..8 */
    if (seg >= 8) return (uint8_t)(0x7F ^ mask);
    return (uint8_t)(((seg << 4) | ((seg < 2 ? (x >> 1) : (x >> seg)) & 0x0F)) ^ mask);
}

/* Fill 256-entry tables once; batch loops index them (faster than the
 * branchy functions above and identical by construction). */
static inline void cv_g711_tables(int16_t *ulaw, int16_t *alaw) {
    for (int i = 0; i < 256; i++) {
        ulaw[i] = cv_ulaw_decode((uint8_t)i);
        alaw[i] = cv_alaw_decode((uint8_t)i);
    }
}

#endif
