/* The plain C peer of workload opus_encode (benchmarks/bench_opus.py).
 *
 * A loop over the system libopus, with the settings callvault._opus.Encoder
 * applies, called once per batch through ctypes so the call overhead is
 * nothing next to the encoding. The encoder is created and destroyed inside
 * the call, as the Python sides create theirs inside the timed function.
 *
 * Built by benchmarks/conftest.py:
 *   gcc -O2 -shared -fPIC opus_loop.c $(pkg-config --cflags --libs opus)
 */
#include <stddef.h>
#include <stdint.h>
#include <opus.h>

/* Encode `frames` frames of `frame_size` int16 samples (mono) into `out`
 * (capacity `cap` bytes), one packet per frame, packet sizes in `lengths`.
 * Returns the total number of bytes written, or a libopus error (< 0), or
 * OPUS_BUFFER_TOO_SMALL if `out` cannot hold another packet. */
int cv_bench_encode(const opus_int16 *pcm, int frames, int frame_size, int rate,
                    int bitrate, int complexity, int dtx, int vbr,
                    unsigned char *out, int cap, int32_t *lengths)
{
    int err = OPUS_OK;
    int used = 0;
    OpusEncoder *st = opus_encoder_create(rate, 1, OPUS_APPLICATION_VOIP, &err);
    if (err != OPUS_OK || st == NULL)
        return err != OPUS_OK ? err : OPUS_ALLOC_FAIL;
    /* The same requests, in the same order, as ext/_opus.pyx's Encoder. */
    if ((err = opus_encoder_ctl(st, OPUS_SET_BITRATE(bitrate))) != OPUS_OK ||
        (err = opus_encoder_ctl(st, OPUS_SET_COMPLEXITY(complexity))) != OPUS_OK ||
        (err = opus_encoder_ctl(st, OPUS_SET_DTX(dtx))) != OPUS_OK ||
        (err = opus_encoder_ctl(st, OPUS_SET_VBR(vbr))) != OPUS_OK ||
        (err = opus_encoder_ctl(st, OPUS_SET_INBAND_FEC(0))) != OPUS_OK ||
        (err = opus_encoder_ctl(st, OPUS_SET_PACKET_LOSS_PERC(0))) != OPUS_OK ||
        (err = opus_encoder_ctl(st, OPUS_SET_SIGNAL(OPUS_SIGNAL_VOICE))) != OPUS_OK) {
        opus_encoder_destroy(st);
        return err;
    }
    for (int i = 0; i < frames; i++) {
        /* 4000: libopus' recommended ceiling, as the binding asks for. */
        if (cap - used < 4000) {
            opus_encoder_destroy(st);
            return OPUS_BUFFER_TOO_SMALL;
        }
        int n = opus_encode(st, pcm + (int64_t)i * frame_size, frame_size, out + used, 4000);
        if (n < 0) {
            opus_encoder_destroy(st);
            return n;
        }
        lengths[i] = n;
        used += n;
    }
    opus_encoder_destroy(st);
    return used;
}
