# cdef extern declarations of libopus (opus.h, opus_multistream.h,
# opus_defines.h). Declarations only: the logic is in ext/_opus.pyx.
from libc.stdint cimport int16_t, int32_t

cdef extern from "opus_defines.h" nogil:
    # Error codes
    enum:
        OPUS_OK
        OPUS_BAD_ARG
        OPUS_BUFFER_TOO_SMALL
        OPUS_INTERNAL_ERROR
        OPUS_INVALID_PACKET
        OPUS_UNIMPLEMENTED
        OPUS_INVALID_STATE
        OPUS_ALLOC_FAIL
    # Values
    enum:
        OPUS_AUTO
        OPUS_BITRATE_MAX
        OPUS_APPLICATION_VOIP
        OPUS_APPLICATION_AUDIO
        OPUS_APPLICATION_RESTRICTED_LOWDELAY
        OPUS_SIGNAL_VOICE
        OPUS_BANDWIDTH_NARROWBAND
    # CTL requests (the OPUS_SET_x(v) macros expand to "x_REQUEST, v")
    enum:
        OPUS_SET_BITRATE_REQUEST
        OPUS_GET_BITRATE_REQUEST
        OPUS_SET_VBR_REQUEST
        OPUS_GET_VBR_REQUEST
        OPUS_SET_COMPLEXITY_REQUEST
        OPUS_GET_COMPLEXITY_REQUEST
        OPUS_SET_INBAND_FEC_REQUEST
        OPUS_GET_INBAND_FEC_REQUEST
        OPUS_SET_PACKET_LOSS_PERC_REQUEST
        OPUS_GET_PACKET_LOSS_PERC_REQUEST
        OPUS_SET_DTX_REQUEST
        OPUS_GET_DTX_REQUEST
        OPUS_SET_SIGNAL_REQUEST
        OPUS_SET_MAX_BANDWIDTH_REQUEST
        OPUS_GET_LOOKAHEAD_REQUEST
        OPUS_GET_IN_DTX_REQUEST
        OPUS_GET_FINAL_RANGE_REQUEST
        OPUS_RESET_STATE

    const char *opus_strerror(int error)
    const char *opus_get_version_string()

cdef extern from "opus.h" nogil:
    ctypedef struct OpusEncoder:
        pass
    ctypedef struct OpusDecoder:
        pass

    OpusEncoder *opus_encoder_create(int32_t Fs, int channels, int application, int *error)
    int32_t opus_encode(OpusEncoder *st, const int16_t *pcm, int frame_size,
                        unsigned char *data, int32_t max_data_bytes)
    void opus_encoder_destroy(OpusEncoder *st)
    int opus_encoder_ctl(OpusEncoder *st, int request, ...)

    OpusDecoder *opus_decoder_create(int32_t Fs, int channels, int *error)
    int opus_decode(OpusDecoder *st, const unsigned char *data, int32_t len,
                    int16_t *pcm, int frame_size, int decode_fec)
    void opus_decoder_destroy(OpusDecoder *st)
    int opus_decoder_ctl(OpusDecoder *st, int request, ...)

    int opus_packet_get_nb_frames(const unsigned char *packet, int32_t len)
    int opus_packet_get_samples_per_frame(const unsigned char *data, int32_t Fs)
    int opus_packet_get_nb_samples(const unsigned char *packet, int32_t len, int32_t Fs)

cdef extern from "opus_multistream.h" nogil:
    ctypedef struct OpusMSDecoder:
        pass

    OpusMSDecoder *opus_multistream_decoder_create(
        int32_t Fs, int channels, int streams, int coupled_streams,
        const unsigned char *mapping, int *error)
    int opus_multistream_decode(OpusMSDecoder *st, const unsigned char *data, int32_t len,
                                int16_t *pcm, int frame_size, int decode_fec)
    void opus_multistream_decoder_destroy(OpusMSDecoder *st)
    int opus_multistream_decoder_ctl(OpusMSDecoder *st, int request, ...)
